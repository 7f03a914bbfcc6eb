"""The client for the Push Gateways: one batch in, one verdict per notification out.

:meth:`GatewayClient.send` takes notifications for one gateway (its base URL, the pusher's
``data.url`` ending in ``/push/v1/``) — the spec's batch items (:mod:`fdpush.gateway_api`), each
encoded once (:class:`EncodedItem`) — and posts them:

- encrypted ones to ``<base>notifyEncrypted/batch``, plain ones to ``<base>notify/batch`` —
  or, for a gateway that answers 404/405 there (one that lacks batch), one ``<base>notify``
  per notification, remembered per base URL for the client's lifetime;
- results are matched by ``id`` (gateways answer in any order): ``success`` → delivered; any
  ``rejected`` pushkey → rejected (the caller deletes those pushers); ``failed``/``partial``
  without one → retry;
- a whole-request 400 names its reason: "Batch size exceeds maximum limit" and 413 say how big
  a batch may be (:attr:`BatchOutcome.max_batch_size`); for the other reasons the batch is
  split in halves until only the bad notification fails;
- anything else that is not the answer we asked for — 408, 429, 5xx, 401/403, redirects, a
  200 we cannot read, timeouts, connection and TLS errors — is *gateway trouble*: nothing is
  decided, and the caller backs off from that gateway (:mod:`fdpush.delivery.circuit`).

TLS: the gateway's certificate is verified (``ca_file``, else the system store), the client
certificate is presented (mutual TLS), HTTP/1.1 connections are kept alive and shared, and at
most ``max_connections_per_gateway`` requests run at once per gateway. Redirects are never
followed: sends go only to the stored, allowed URL. The HTTP client is aiohttp's: a request of
a hundred notifications costs it about a third of the CPU time httpx takes (its parser is
compiled), and batches of a hundred leave nothing for HTTP/2's multiplexing to win.

Logs name gateways by host:port and never carry pushkeys, payloads or ciphertexts.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import aiohttp
from yarl import URL

from fdpush import __version__
from fdpush.gateway_api import (
    BATCH_TOO_BIG,
    MAX_ITEM_ID_LENGTH,
    BatchNotificationResponse,
    EncryptedBatchItem,
    ErrorResponse,
    NotifyResponse,
    PlainBatchItem,
    PlainNotification,
    PlainNotificationRequest,
    encode,
    read_answer,
)

__all__ = [
    "ENCRYPTED_BATCH",
    "NOTIFY",
    "PLAIN_BATCH",
    "BatchOutcome",
    "EncodedItem",
    "GatewayClient",
    "Outcome",
    "Verdict",
    "batch_body",
    "batch_verdicts",
]

log = logging.getLogger("fdpush.delivery")

ENCRYPTED_BATCH = "notifyEncrypted/batch"
PLAIN_BATCH = "notify/batch"
NOTIFY = "notify"

Outcome = Literal["delivered", "rejected", "retry", "failed"]

_MAX_REASON_CHARS = 200
_MAX_ANSWER_BYTES = 1024 * 1024  # a batch answer is a few KB; more is a broken gateway
# Idle connections are dropped a little before the 5 s idle timeout common servers use, so we
# do not send on a connection the server is just closing.
_KEEPALIVE_EXPIRY = 4.0
_HEADERS = {"content-type": "application/json", "user-agent": f"fdpush/{__version__}"}
# When one answer names an id twice, the more telling result wins.
_RANK: dict[Outcome, int] = {"delivered": 0, "retry": 1, "failed": 2, "rejected": 3}


@dataclass(slots=True)  # not frozen: a hundred per batch, and frozen costs ~1 µs each
class EncodedItem:
    """A batch item to send and its JSON, encoded once: the sender sizes batches by it and
    joins it into the request body (:func:`batch_body`)."""

    item: EncryptedBatchItem | PlainBatchItem
    encrypted: bool  # to notifyEncrypted/batch; else to notify/batch (or notify)
    encoded: bytes = field(repr=False, compare=False)

    @classmethod
    def of(cls, item: EncryptedBatchItem | PlainBatchItem) -> EncodedItem:
        """``item`` with its JSON. Raises ValueError for an empty id or one over 64 characters."""
        if not 1 <= len(item["id"]) <= MAX_ITEM_ID_LENGTH:
            raise ValueError(f"an item id has 1 to {MAX_ITEM_ID_LENGTH} characters")
        return cls(item, "device" in item["notification"], encode(item))

    @property
    def id(self) -> str:
        """The item's id: the notification's id, stable across retries."""
        return self.item["id"]


def batch_body(items: Sequence[EncodedItem]) -> bytes:
    """The request body of a batch endpoint: ``{"notifications": [<the items>]}``."""
    return b'{"notifications":[' + b",".join(item.encoded for item in items) + b"]}"


@dataclass(slots=True)  # not frozen: one per notification, and frozen costs ~1 µs each
class Verdict:
    """What the sender makes of one notification.

    ``delivered``: the gateway took it. ``rejected``: the gateway listed ``rejected_pushkeys``
    (delete those pushers). ``retry``: the gateway could not take it this time. ``failed``:
    the gateway refuses it for good (a 400 naming this notification alone).
    """

    id: str
    outcome: Outcome
    rejected_pushkeys: tuple[str, ...] = ()  # every pushkey the gateway listed for this item
    error: str | None = None  # short reason (no payload, no secrets)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one :meth:`GatewayClient.send` achieved.

    Items without an entry in ``results`` were not decided and must be retried by the caller
    (after backing off when ``gateway_trouble`` is set, with smaller batches when
    ``max_batch_size`` is set).
    """

    results: dict[str, Verdict]  # by item id
    status_code: int | None  # HTTP status of the (last) request, None when no answer
    gateway_trouble: str | None = None  # whole-request failure to back off on
    retry_after_seconds: float | None = None  # from Retry-After (seconds or HTTP date)
    max_batch_size: int | None = None  # learned from a 400 "Batch size exceeds …" / 413


@dataclass
class _Collected:
    """What the requests of one ``send`` found out so far."""

    results: dict[str, Verdict] = field(default_factory=dict)
    status_code: int | None = None
    trouble: str | None = None
    retry_after: float | None = None
    max_batch_size: int | None = None

    def add(self, result: Verdict) -> None:
        current = self.results.get(result.id)
        if current is None or _RANK[result.outcome] > _RANK[current.outcome]:
            self.results[result.id] = result

    def learn_batch_size(self, size: int) -> None:
        if self.max_batch_size is None or size < self.max_batch_size:
            self.max_batch_size = size

    def outcome(self) -> BatchOutcome:
        return BatchOutcome(
            results=self.results,
            status_code=self.status_code,
            gateway_trouble=self.trouble,
            retry_after_seconds=self.retry_after,
            max_batch_size=self.max_batch_size,
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    retry_after: float | None


class GatewayClient:
    """Sends notifications to Push Gateways over (mutual) TLS; one per process, shared.

    ``ca_file``: the CA bundle that gateway certificates must chain to (None: the system
    store). ``client_cert`` / ``client_key``: the client certificate for mutual TLS (both or
    neither; the key may be inside ``client_cert`` when ``client_key`` is None). Each request
    must be answered within ``timeout_seconds``. At most ``max_connections_per_gateway``
    requests run at once per gateway (scheme, host and port).
    """

    def __init__(
        self,
        *,
        ca_file: Path | None,
        client_cert: Path | None,
        client_key: Path | None,
        timeout_seconds: float = 10.0,
        max_connections_per_gateway: int = 8,
    ) -> None:
        """Raises ValueError for a key without a certificate or limits out of range, and
        OSError / ssl.SSLError when the CA file or client certificate cannot be loaded."""
        if client_key is not None and client_cert is None:
            raise ValueError("a client key needs its client certificate")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_connections_per_gateway < 1:
            raise ValueError("max_connections_per_gateway must be at least 1")
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if client_cert is not None:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        self._timeout = timeout_seconds
        self._per_gateway = max_connections_per_gateway
        self._tls = context
        self._http: aiohttp.ClientSession | None = None  # made in the event loop, on first use
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._without_batch: set[str] = set()

    async def send(self, base_url: str, items: Sequence[EncodedItem]) -> BatchOutcome:
        """Send ``items`` (of one kind or both) to the gateway at ``base_url``.

        Encrypted items go in one ``notifyEncrypted/batch`` request, plain ones in one
        ``notify/batch`` request (or one ``notify`` each for a gateway without batch); the
        caller sizes batches. Never raises for anything the gateway or the network does: that
        is in the outcome. Raises ValueError for a ``base_url`` not ending in ``/`` or two
        items with the same id.
        """
        if not base_url.endswith("/"):
            raise ValueError("base_url ends with '/' (…/push/v1/)")
        if len({item.id for item in items}) != len(items):
            raise ValueError("item ids must be unique within a send")
        collected = _Collected()
        encrypted = [item for item in items if item.encrypted]
        plain = [item for item in items if not item.encrypted]
        if encrypted:
            await self._send_batch(base_url, ENCRYPTED_BATCH, encrypted, collected)
        if plain and collected.trouble is None:
            if base_url in self._without_batch:
                await self._notify_each(base_url, plain, collected)
            else:
                await self._send_batch(base_url, PLAIN_BATCH, plain, collected)
        outcome = collected.outcome()
        if log.isEnabledFor(logging.DEBUG):
            counts: dict[str, int] = {}
            for result in outcome.results.values():
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
            log.debug(
                "gateway %s: %d items, %s, undecided %d",
                _host_port(base_url),
                len(items),
                counts,
                len(items) - len(outcome.results),
            )
        return outcome

    def lacks_batch(self, base_url: str) -> bool:
        """Whether the gateway at ``base_url`` answered 404/405 to ``notify/batch``."""
        return base_url in self._without_batch

    async def aclose(self) -> None:
        """Close the connections."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                # The pool itself is unbounded: the bound is per gateway (``_slots``), so a slow
                # gateway cannot take the connections the others need.
                connector=aiohttp.TCPConnector(
                    ssl=self._tls, limit=0, keepalive_timeout=_KEEPALIVE_EXPIRY
                ),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,  # no proxies or CA bundles from the environment: settings only
                auto_decompress=False,  # we ask for no encoding: a batch answer is plain JSON
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._http

    # --- requests ------------------------------------------------------------------------------

    async def _send_batch(
        self,
        base_url: str,
        endpoint: str,
        items: Sequence[EncodedItem],
        collected: _Collected,
    ) -> None:
        answer = await self._post(base_url + endpoint, batch_body(items), collected)
        if answer is None:
            return
        if answer.status == 200:
            verdicts = batch_verdicts(answer.body, {item.id for item in items})
            if verdicts is None:
                self._trouble(base_url, collected, "HTTP 200 without a batch result", answer)
            else:
                for verdict in verdicts:
                    collected.add(verdict)
        elif answer.status in (404, 405) and endpoint == PLAIN_BATCH:
            log.info("gateway %s lacks notify/batch: using notify", _host_port(base_url))
            self._without_batch.add(base_url)
            await self._notify_each(base_url, items, collected)
        elif answer.status == 400:
            await self._refused(base_url, endpoint, items, answer, collected)
        elif answer.status == 413:
            if len(items) == 1:
                self._trouble(base_url, collected, "HTTP 413 for a single notification", answer)
            collected.learn_batch_size(max(1, len(items) // 2))
        else:
            self._trouble(base_url, collected, _status_reason(answer.status), answer)

    async def _refused(
        self,
        base_url: str,
        endpoint: str,
        items: Sequence[EncodedItem],
        answer: _Answer,
        collected: _Collected,
    ) -> None:
        """A whole-request 400: learn the batch size, or split until the bad item stands alone."""
        error, details = _error_body(answer.body)
        if error == BATCH_TOO_BIG:
            limit = details.get("max_batch_size")
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit < len(items):
                limit = len(items) // 2
            if limit < 1:
                self._trouble(base_url, collected, "HTTP 400: a batch of one is too big", answer)
                collected.learn_batch_size(1)
            else:
                collected.learn_batch_size(limit)
            return
        if len(items) > 1:
            middle = len(items) // 2
            await self._send_batch(base_url, endpoint, items[:middle], collected)
            if collected.trouble is None:
                await self._send_batch(base_url, endpoint, items[middle:], collected)
            return
        reason = f"HTTP 400: {error}" if error else "HTTP 400 (answer not JSON)"
        collected.add(Verdict(items[0].id, "failed", error=reason))

    async def _notify_each(
        self, base_url: str, items: Sequence[EncodedItem], collected: _Collected
    ) -> None:
        """One ``notify`` per plain item, for a gateway without ``notify/batch``."""

        async def one(item: EncodedItem) -> None:
            if collected.trouble is not None:
                return  # the gateway is in trouble: leave the rest for later
            # Only plain items come here (``send`` splits them off).
            notification = cast(PlainNotification, item.item["notification"])
            request: PlainNotificationRequest = {"notification": notification}
            answer = await self._post(base_url + NOTIFY, encode(request), collected)
            if answer is None:
                return
            if answer.status == 200:
                notified = read_answer(NotifyResponse, answer.body)
                if notified is None:
                    self._trouble(base_url, collected, "HTTP 200 without a notify result", answer)
                elif rejected := notified.get("rejected"):
                    collected.add(Verdict(item.id, "rejected", tuple(rejected)))
                else:
                    collected.add(Verdict(item.id, "delivered"))
            elif answer.status == 400:
                error, _details = _error_body(answer.body)
                reason = f"HTTP 400: {error}" if error else "HTTP 400 (answer not JSON)"
                collected.add(Verdict(item.id, "failed", error=reason))
            else:
                self._trouble(base_url, collected, _status_reason(answer.status), answer)

        await asyncio.gather(*(one(item) for item in items))

    async def _post(self, url: str, content: bytes, collected: _Collected) -> _Answer | None:
        """POST ``content`` (JSON); the answer, or None after noting gateway trouble."""
        origin = _origin(url)
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self._per_gateway)
        async with slots:
            try:
                async with asyncio.timeout(self._timeout):
                    answer = await self._exchange(url, content)
            except TimeoutError:
                reason = f"no answer within {self._timeout:g}s"
            except aiohttp.ClientConnectorError as exc:
                reason = f"cannot connect: {_short(str(exc)) or type(exc).__name__}"
            except _AnswerTooLarge:
                reason = f"answer larger than {_MAX_ANSWER_BYTES} bytes"
            except (aiohttp.ClientError, OSError) as exc:
                reason = f"connection failed: {_short(str(exc)) or type(exc).__name__}"
            else:
                collected.status_code = answer.status
                return answer
        collected.status_code = None
        self._trouble(url, collected, reason, None)
        return None

    async def _exchange(self, url: str, content: bytes) -> _Answer:
        async with self._session().post(
            url, data=content, headers=_HEADERS, allow_redirects=False
        ) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > _MAX_ANSWER_BYTES:
                    raise _AnswerTooLarge
            return _Answer(
                response.status,
                bytes(body),
                _parse_retry_after(response.headers.get("retry-after")),
            )

    def _trouble(
        self, url: str, collected: _Collected, reason: str, answer: _Answer | None
    ) -> None:
        if collected.trouble is None:
            collected.trouble = reason
        if answer is not None and answer.retry_after is not None:
            collected.retry_after = max(collected.retry_after or 0.0, answer.retry_after)
        log.warning("gateway %s in trouble: %s", _host_port(url), reason)


class _AnswerTooLarge(Exception):
    pass


# --- reading answers ---------------------------------------------------------------------------


def batch_verdicts(body: bytes, ids: Collection[str]) -> list[Verdict] | None:
    """The verdicts a batch answer gives on the items ``ids``; None when ``body`` is not a
    batch answer.

    Results are matched by ``id`` (unknown ids are ignored; an item without a result gets no
    verdict). Any ``rejected`` pushkey makes the item rejected, whatever its status;
    ``success`` is delivered; ``failed`` and ``partial`` are retried.
    """
    answer = read_answer(BatchNotificationResponse, body)
    if answer is None:
        return None
    verdicts: list[Verdict] = []
    for result in answer["results"]:
        item_id = result["id"]
        if item_id not in ids:
            continue
        error = result.get("error")
        reason = _short(error) if error else ""
        rejected = result.get("rejected")
        if rejected:
            verdicts.append(Verdict(item_id, "rejected", tuple(rejected), reason or None))
        elif result["status"] == "success":
            verdicts.append(Verdict(item_id, "delivered"))
        else:
            why = reason or f"gateway said {result['status']}"
            verdicts.append(Verdict(item_id, "retry", error=why))
    return verdicts


def _error_body(body: bytes) -> tuple[str | None, dict[str, Any]]:
    """The ``error`` text and ``details`` of an error answer (None, {} when it has none)."""
    answer = read_answer(ErrorResponse, body)
    if answer is None:
        return None, {}
    error = answer["error"]
    return (_short(error) if error else None), answer.get("details") or {}


def _status_reason(status: int) -> str:
    if 300 <= status < 400:
        return f"HTTP {status}: redirect not followed"
    return f"HTTP {status}"


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: what the per-gateway connection limit counts."""
    return f"{URL(url).scheme}://{_host_port(url)}"


def _host_port(url: str) -> str:
    """``host:port`` of ``url``: how a gateway is named in logs."""
    parsed = URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.host or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"


def _short(text: str) -> str:
    """``text`` on one line, at most a couple of hundred characters (for reasons and logs)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON_CHARS else flat[: _MAX_REASON_CHARS - 1] + "…"
