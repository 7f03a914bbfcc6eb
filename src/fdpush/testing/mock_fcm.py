"""A mock FCM HTTP v1 and its OAuth2 token endpoint, over HTTP/2 + TLS.

- ``POST /token``: the OAuth2 JWT-bearer exchange of a service account (the JSON's
  ``token_uri`` points here): the assertion must be RS256, signed by a registered account's key,
  ``aud`` this endpoint, ``scope`` naming Firebase messaging, at most an hour long. Answers an
  access token valid for ``token_lifetime`` seconds.
- ``POST /v1/projects/{project}/messages:send``: a valid Bearer token of that project (else 401
  ``UNAUTHENTICATED`` / 403 ``PERMISSION_DENIED``), a ``message`` with a ``token``, string-only
  ``data``, ``android.priority`` ``HIGH``/``NORMAL``, ``data`` of at most 4096 bytes (else 400
  ``INVALID_ARGUMENT``); then the switches: GOAWAY, forced error codes (``QUOTA_EXCEEDED`` with
  ``Retry-After``, ``UNAVAILABLE``, ``INTERNAL``, ``INVALID_ARGUMENT``, ``SENDER_ID_MISMATCH``,
  ``THIRD_PARTY_AUTH_ERROR``), dead tokens (404 ``UNREGISTERED``), a latency; else 200 with the
  message ``name``, and the message is recorded.

The switches and the record are also reachable over HTTP (``/_mock/…``, see
:mod:`fdpush.testing.control`), for tests in another process or language.

Error bodies have FCM's shape: ``{"error": {"code", "message", "status", "details":
[{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode"}]}}``.

Use::

    with MockFcm(pki) as fcm:
        account = fcm.add_service_account(tmp_path, "example-project")
        fcm.kill(pushkey)
        fcm.fail_next(1, "QUOTA_EXCEEDED", retry_after=60)
        ... configure the gateway with ``account`` and ``fcm.url`` ...
        fcm.received
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fdpush.gateway.certs import TestPki
from fdpush.testing.control import CONTROL_PREFIX, Switch, control_answer
from fdpush.testing.h2server import H2Request, H2Response, H2ServerThread, SendGoaway

__all__ = ["FCM_ERRORS", "FcmMessage", "MockFcm"]

MAX_MESSAGE = 4096
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# FCM errorCode → (HTTP status, google.rpc status)
FCM_ERRORS: dict[str, tuple[int, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
}


@dataclass(frozen=True)
class FcmMessage:
    """One message the mock accepted."""

    project: str
    token: str
    message: dict[str, Any]
    name: str


@dataclass(frozen=True)
class _Account:
    client_email: str
    project_id: str
    public_pem: bytes


@dataclass
class _Forced:
    code: str
    retry_after: int | None
    left: int


class MockFcm:
    """The mock FCM server (see the module docstring). Thread-safe switches and record."""

    def __init__(
        self,
        pki: TestPki,
        *,
        token_lifetime: int = 3600,
        clock: Callable[[], float] = time.time,
        max_concurrent_streams: int | None = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._server = H2ServerThread(
            self._handle,
            cert=pki.server_cert,
            key=pki.server_key,
            max_concurrent_streams=max_concurrent_streams,
            host=host,
            port=port,
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._access: dict[str, tuple[str, float]] = {}  # token → (project, expires at)
        self._dead: set[str] = set()
        self._forced: deque[_Forced] = deque()
        self._goaways = 0
        self._count = 0
        self.token_lifetime = token_lifetime
        self.latency = 0.0
        self.received: list[FcmMessage] = []
        self.answers: list[tuple[int, str]] = []  # every messages:send answer: (status, code)
        self.tokens_issued = 0

    # --- setting up -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure a gateway with."""
        return self._server.url

    @property
    def token_uri(self) -> str:
        """The OAuth2 token endpoint, as a service account's ``token_uri``."""
        return f"{self._server.url}/token"

    @property
    def server(self) -> H2ServerThread:
        """The HTTP/2 server."""
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

    def add_service_account(self, directory: Path, project_id: str) -> Path:
        """Write a service-account JSON for ``project_id`` whose ``token_uri`` is this mock's,
        register its key, and return the file's path (start the mock first)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        email = f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
        document = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": private_pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "token_uri": self.token_uri,
        }
        path = Path(directory) / f"{project_id}-service-account.json"
        path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        path.chmod(0o600)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with self._lock:
            self._accounts[email] = _Account(email, project_id, public)
        return path

    # --- switches ---------------------------------------------------------------------------

    def kill(self, token: str) -> None:
        """From now on answer messages to ``token`` with 404 ``UNREGISTERED``."""
        with self._lock:
            self._dead.add(token)

    def fail_next(self, count: int, code: str, *, retry_after: int | None = None) -> None:
        """Answer the next ``count`` messages (after authentication) with the error ``code``."""
        if code not in FCM_ERRORS:
            raise ValueError(f"unknown FCM error code {code}")
        with self._lock:
            self._forced.append(_Forced(code, retry_after, count))

    def goaway_next(self, count: int = 1) -> None:
        """Answer the next ``count`` messages with GOAWAY and close their connection."""
        with self._lock:
            self._goaways += count

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far invalid (401 on its next use)."""
        with self._lock:
            self._access.clear()

    def reset(self) -> None:
        """Every switch off, the record emptied (accounts and tokens stay)."""
        with self._lock:
            self._dead.clear()
            self._forced.clear()
            self._goaways = 0
            self.latency = 0.0
            self.received.clear()
            self.answers.clear()

    def accepted_for(self, token: str) -> list[FcmMessage]:
        """The accepted messages to ``token``, oldest first."""
        with self._lock:
            return [message for message in self.received if message.token == token]

    # --- answering ---------------------------------------------------------------------------

    def _switches(self) -> dict[str, Switch]:
        return {
            "kill": lambda b: self.kill(str(b["token"])),
            "fail_next": lambda b: self.fail_next(
                int(b.get("count", 1)),
                str(b["code"]),
                retry_after=None if b.get("retry_after") is None else int(b["retry_after"]),
            ),
            "goaway_next": lambda b: self.goaway_next(int(b.get("count", 1))),
            "latency": lambda b: setattr(self, "latency", float(b["seconds"])),
            "expire_access_tokens": lambda _b: self.expire_access_tokens(),
            "reset": lambda _b: self.reset(),
        }

    def _received_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(message) for message in self.received]

    async def _handle(self, request: H2Request) -> H2Response:
        if request.path.startswith(CONTROL_PREFIX):
            return control_answer(request, self._switches(), self._received_json)
        if request.path == "/token":
            return self._token(request)
        with self._lock:
            if self._goaways > 0:
                self._goaways -= 1
                raise SendGoaway
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        response, code = self._send(request)
        with self._lock:
            self.answers.append((response.status, code))
        return response

    def _token(self, request: H2Request) -> H2Response:
        form = parse_qs(request.body.decode(errors="replace"))
        assertion = (form.get("assertion") or [""])[0]
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return _oauth_error("unsupported_grant_type")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            with self._lock:
                account = self._accounts.get(str(unverified.get("iss")))
            if account is None:
                return _oauth_error("invalid_grant")
            claims = jwt.decode(
                assertion,
                account.public_pem,
                algorithms=["RS256"],
                audience=self.token_uri,
                options={
                    "require": ["iss", "aud", "iat", "exp", "scope"],
                    "verify_exp": False,  # checked against this mock's clock below
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant")
        now = self._clock()
        if not claims["iat"] - 60 <= now < claims["exp"]:
            return _oauth_error("invalid_grant")
        if FCM_SCOPE not in str(claims["scope"]).split() or claims["exp"] - claims["iat"] > 3600:
            return _oauth_error("invalid_scope")
        access = secrets.token_urlsafe(32)
        with self._lock:
            self._access[access] = (account.project_id, self._clock() + self.token_lifetime)
            self.tokens_issued += 1
        body = {"access_token": access, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return H2Response(200, orjson.dumps(body), {"content-type": "application/json"})

    def _send(self, request: H2Request) -> tuple[H2Response, str]:
        parts = request.path.split("/")
        # /v1/projects/{project}/messages:send
        if (
            request.method != "POST"
            or len(parts) != 5
            or parts[1:3] != ["v1", "projects"]
            or parts[4] != "messages:send"
        ):
            return _error(404, "NOT_FOUND", None, "no such method"), "NOT_FOUND"
        project = parts[3]
        scheme, _, access = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            granted = self._access.get(access) if scheme == "Bearer" else None
            if granted is None or granted[1] <= self._clock():
                return _error(401, "UNAUTHENTICATED", None, "bad token"), "UNAUTHENTICATED"
            if granted[0] != project:
                return _error(403, "PERMISSION_DENIED", None, "other project"), "PERMISSION_DENIED"
            invalid = _check_message(request.body)
            if isinstance(invalid, str):
                return _fcm_error("INVALID_ARGUMENT", invalid), "INVALID_ARGUMENT"
            if self._forced:
                forced = self._forced[0]
                forced.left -= 1
                if forced.left <= 0:
                    self._forced.popleft()
                response = _fcm_error(forced.code, "forced by the mock")
                if forced.retry_after is not None:
                    response.headers["retry-after"] = str(forced.retry_after)
                return response, forced.code
            message = invalid
            token = str(message["token"])
            if token in self._dead:
                return _fcm_error("UNREGISTERED", "Requested entity was not found."), "UNREGISTERED"
            self._count += 1
            name = f"projects/{project}/messages/0:{self._count}"
            self.received.append(FcmMessage(project, token, message, name))
        return H2Response(200, orjson.dumps({"name": name})), ""


def _check_message(body: bytes) -> dict[str, Any] | str:
    """The ``message`` object, or what is wrong with it."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not JSON"
    message = document.get("message") if isinstance(document, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("token"), str):
        return "message.token is required"
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return "message.data must map strings to strings"
    android = message.get("android", {})
    if not isinstance(android, dict) or android.get("priority", "NORMAL") not in (
        "HIGH",
        "NORMAL",
    ):
        return "message.android.priority must be HIGH or NORMAL"
    if len(orjson.dumps(data)) > MAX_MESSAGE:
        return f"message.data over {MAX_MESSAGE} bytes"
    return message


def _error(status: int, rpc_status: str, code: str | None, text: str) -> H2Response:
    error: dict[str, Any] = {"code": status, "message": text, "status": rpc_status}
    if code is not None:
        error["details"] = [{"@type": _ERROR_TYPE, "errorCode": code}]
    body = orjson.dumps({"error": error})
    return H2Response(status, body, {"content-type": "application/json"})


def _fcm_error(code: str, text: str) -> H2Response:
    status, rpc_status = FCM_ERRORS[code]
    return _error(status, rpc_status, code, text)


def _oauth_error(error: str) -> H2Response:
    body = orjson.dumps({"error": error})
    return H2Response(400, body, {"content-type": "application/json"})
