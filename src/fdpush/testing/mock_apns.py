"""A mock APNs: ``POST /3/device/{token}`` over HTTP/2 + TLS, checking what Apple checks.

It checks, in Apple's order of concern, and answers with Apple's documented ``{"reason"}``:

- authentication: a provider JWT (``authorization: bearer …``: ES256, a known ``kid``, ``iss``
  the key's team, signature, at most an hour old → else 403 ``InvalidProviderToken`` /
  ``ExpiredProviderToken``; on one connection, a new token of a key sooner than
  ``min_token_interval`` after that key's last new one → 429 ``TooManyProviderTokenUpdates``),
  or a client certificate whose subject was registered (→ else 403 ``MissingProviderToken``);
- ``apns-topic`` (400 ``MissingTopic`` / ``TopicDisallowed``), ``apns-push-type`` (400
  ``InvalidPushType``), ``apns-priority`` 5 or 10 (400 ``BadPriority``), the payload (413
  ``PayloadTooLarge`` over 4096 bytes, 400 ``PayloadEmpty`` without an ``aps`` object);
- then the switches: a GOAWAY, forced answers (429 ``TooManyRequests``, 503 ``Shutdown``, …),
  dead tokens (410 ``Unregistered``, 400 ``BadDeviceToken``), a latency (for all, or
  per topic); else 200 with
  ``apns-id``, and the push is recorded.

The switches and the record are also reachable over HTTP (``/_mock/…``, see
:mod:`fdpush.testing.control`), for tests in another process or language.

Use::

    key = make_apns_key(tmp_path, team_id="TEAM000001", key_id="KEY0000001")
    with MockApns(pki) as apns:
        apns.add_key(key, topics=["de.example.app"])
        apns.kill(pushkey)                    # 410 Unregistered from now on
        apns.fail_next(2, 503, "Shutdown")    # the next two pushes
        ... send to apns.url ...
        apns.received                          # what it accepted
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fdpush.gateway.certs import TestPki
from fdpush.testing.control import CONTROL_PREFIX, Switch, control_answer
from fdpush.testing.h2server import H2Request, H2Response, H2ServerThread, SendGoaway

__all__ = ["ApnsKey", "ApnsPush", "MockApns", "make_apns_key"]

MAX_PAYLOAD = 4096
PUSH_TYPES = {
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
}
_PATH_PREFIX = "/3/device/"


@dataclass(frozen=True)
class ApnsKey:
    """An APNs signing key: the ``.p8`` file a gateway is configured with, and its ids."""

    team_id: str
    key_id: str
    path: Path
    public_pem: bytes


def make_apns_key(directory: Path, *, team_id: str, key_id: str) -> ApnsKey:
    """Write a fresh P-256 signing key as ``AuthKey_<key_id>.p8`` (PKCS#8 PEM, like Apple's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = Path(directory) / f"AuthKey_{key_id}.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ApnsKey(team_id, key_id, path, public)


@dataclass(frozen=True)
class ApnsPush:
    """One push the mock accepted."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    apns_id: str


@dataclass
class _Forced:
    status: int
    reason: str
    retry_after: int | None
    left: int


class MockApns:
    """The mock APNs server (see the module docstring). Thread-safe switches and record."""

    def __init__(
        self,
        pki: TestPki,
        *,
        max_concurrent_streams: int | None = 1000,
        min_token_interval: float = 20 * 60,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._server = H2ServerThread(
            self._handle,
            cert=pki.server_cert,
            key=pki.server_key,
            client_ca=pki.ca_cert,
            max_concurrent_streams=max_concurrent_streams,
            host=host,
            port=port,
        )
        self._clock = clock
        self._min_token_interval = min_token_interval
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[ApnsKey, frozenset[str]]] = {}
        self._certificates: dict[str, frozenset[str]] = {}
        self._dead: dict[str, tuple[int, str]] = {}
        self._forced: deque[_Forced] = deque()
        self._goaways = 0
        # (connection, key id) → the provider token it uses, and since when
        self._token_on: dict[tuple[int, str], tuple[str, float]] = {}
        self.latency = 0.0  # seconds before each answer
        self.topic_latency: dict[str, float] = {}  # and before each answer for one topic
        self.received: list[ApnsPush] = []
        self.answers: list[tuple[int, str]] = []  # every answer: (status, reason)
        self.tokens_seen: list[str] = []  # distinct provider JWTs, in the order first seen

    # --- setting up -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure a gateway with."""
        return self._server.url

    @property
    def server(self) -> H2ServerThread:
        """The HTTP/2 server (connection counts, :meth:`~H2ServerThread.drop_connections`)."""
        return self._server

    def start(self) -> Self:
        """Start listening; returns self."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def add_key(self, key: ApnsKey, topics: Iterable[str]) -> None:
        """Accept provider JWTs signed with ``key``, for these topics (bundle ids)."""
        with self._lock:
            self._keys[key.key_id] = (key, frozenset(topics))

    def add_certificate(self, subject: str, topics: Iterable[str]) -> None:
        """Accept the client certificate with this RFC 4514 subject, for these topics."""
        with self._lock:
            self._certificates[subject] = frozenset(topics)

    # --- switches ---------------------------------------------------------------------------

    def kill(self, token: str, reason: str = "Unregistered") -> None:
        """From now on answer pushes to ``token`` as dead: ``Unregistered``/``ExpiredToken``
        (410) or ``BadDeviceToken`` (400)."""
        status = 400 if reason == "BadDeviceToken" else 410
        with self._lock:
            self._dead[token] = (status, reason)

    def fail_next(
        self, count: int, status: int, reason: str, *, retry_after: int | None = None
    ) -> None:
        """Answer the next ``count`` pushes (after authentication) with ``status``/``reason``."""
        with self._lock:
            self._forced.append(_Forced(status, reason, retry_after, count))

    def goaway_next(self, count: int = 1) -> None:
        """Answer the next ``count`` requests with GOAWAY and close their connection."""
        with self._lock:
            self._goaways += count

    def reset(self) -> None:
        """Every switch off, the record emptied (keys and certificates stay)."""
        with self._lock:
            self._dead.clear()
            self._forced.clear()
            self._goaways = 0
            self.latency = 0.0
            self.topic_latency.clear()
            self.received.clear()
            self.answers.clear()

    def accepted_for(self, token: str) -> list[ApnsPush]:
        """The accepted pushes to ``token``, oldest first."""
        with self._lock:
            return [push for push in self.received if push.token == token]

    # --- answering ---------------------------------------------------------------------------

    def _switches(self) -> dict[str, Switch]:
        return {
            "kill": lambda b: self.kill(str(b["token"]), str(b.get("reason", "Unregistered"))),
            "fail_next": lambda b: self.fail_next(
                int(b.get("count", 1)),
                int(b["status"]),
                str(b["reason"]),
                retry_after=None if b.get("retry_after") is None else int(b["retry_after"]),
            ),
            "goaway_next": lambda b: self.goaway_next(int(b.get("count", 1))),
            "latency": lambda b: setattr(self, "latency", float(b["seconds"])),
            "reset": lambda _b: self.reset(),
        }

    def _received_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(push) for push in self.received]

    async def _handle(self, request: H2Request) -> H2Response:
        if request.path.startswith(CONTROL_PREFIX):
            return control_answer(request, self._switches(), self._received_json)
        with self._lock:
            if self._goaways > 0:
                self._goaways -= 1
                raise SendGoaway
        latency = self.latency + self.topic_latency.get(request.headers.get("apns-topic", ""), 0)
        if latency > 0:
            await asyncio.sleep(latency)
        status, reason, headers = self._answer(request)
        with self._lock:
            self.answers.append((status, reason))
        if status == 200:
            return H2Response(200, headers=headers)
        body: dict[str, Any] = {"reason": reason}
        if status == 410:
            body["timestamp"] = int(self._clock() * 1000)
        return H2Response(status, orjson.dumps(body), headers)

    def _answer(self, request: H2Request) -> tuple[int, str, dict[str, str]]:
        if request.method != "POST":
            return 405, "MethodNotAllowed", {}
        if not request.path.startswith(_PATH_PREFIX) or len(request.path) == len(_PATH_PREFIX):
            return 404, "BadPath", {}
        token = unquote(request.path.removeprefix(_PATH_PREFIX))
        with self._lock:
            refused, topics = self._authenticate(request)
            if refused is not None:
                return *refused, {}
            invalid = _check_request(request, topics)
            if invalid is not None:
                return *invalid, {}
            if self._forced:
                forced = self._forced[0]
                forced.left -= 1
                if forced.left <= 0:
                    self._forced.popleft()
                headers = {}
                if forced.retry_after is not None:
                    headers["retry-after"] = str(forced.retry_after)
                return forced.status, forced.reason, headers
            dead = self._dead.get(token)
            if dead is not None:
                return *dead, {}
            apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
            payload = orjson.loads(request.body)
            self.received.append(ApnsPush(token, dict(request.headers), payload, apns_id))
            return 200, "", {"apns-id": apns_id}

    def _authenticate(self, request: H2Request) -> tuple[tuple[int, str] | None, frozenset[str]]:
        authorization = request.headers.get("authorization")
        if authorization is None:
            if request.client_subject is not None and request.client_subject in self._certificates:
                return None, self._certificates[request.client_subject]
            return (403, "MissingProviderToken"), frozenset()
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return (403, "InvalidProviderToken"), frozenset()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return (403, "InvalidProviderToken"), frozenset()
        entry = self._keys.get(str(header.get("kid")))
        if header.get("alg") != "ES256" or entry is None:
            return (403, "InvalidProviderToken"), frozenset()
        key, topics = entry
        try:
            claims = jwt.decode(
                token, key.public_pem, algorithms=["ES256"], options={"verify_iat": False}
            )
        except jwt.PyJWTError:
            return (403, "InvalidProviderToken"), frozenset()
        if claims.get("iss") != key.team_id or not isinstance(claims.get("iat"), int):
            return (403, "InvalidProviderToken"), frozenset()
        now = self._clock()
        if now - claims["iat"] > 3600:
            return (403, "ExpiredProviderToken"), frozenset()
        current = self._token_on.get((request.connection, key.key_id))
        if current is None or current[0] != token:
            if current is not None and now - current[1] < self._min_token_interval:
                return (429, "TooManyProviderTokenUpdates"), frozenset()
            self._token_on[(request.connection, key.key_id)] = (token, now)
            if token not in self.tokens_seen:
                self.tokens_seen.append(token)
        return None, topics


def _check_request(request: H2Request, topics: frozenset[str]) -> tuple[int, str] | None:
    headers = request.headers
    topic = headers.get("apns-topic")
    if topic is None:
        return 400, "MissingTopic"
    if topic not in topics:
        return 400, "TopicDisallowed"
    push_type = headers.get("apns-push-type")
    if push_type not in PUSH_TYPES:
        return 400, "InvalidPushType"
    priority = headers.get("apns-priority", "10")
    if priority not in ("5", "10") or (push_type == "background" and priority != "5"):
        return 400, "BadPriority"
    if len(request.body) > MAX_PAYLOAD:
        return 413, "PayloadTooLarge"
    try:
        payload = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return 400, "PayloadEmpty"
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        return 400, "PayloadEmpty"
    return None
