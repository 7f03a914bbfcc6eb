"""The one typed settings object, read once at start-up from ``FDPUSH_*`` variables.

Values come from the environment and, optionally, from a config file in ``KEY=value`` form
(``fdpush --config FILE`` or ``FDPUSH_CONFIG_FILE``); the environment wins over the file.
A bad value stops start-up with :class:`ConfigError`, whose message names the setting.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import inspect
import logging
import os
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal, get_args

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "ChannelDefinition",
    "ConfigError",
    "GatewayHost",
    "RateLimit",
    "RsClient",
    "Settings",
    "check_master_key",
    "config_problems",
    "example_config",
    "load_settings",
    "resolve_master_key",
    "unknown_settings",
]

ENV_PREFIX = "FDPUSH_"
CHANNEL_STATUSES = ("enabled", "disabled", "not_set")
_CHANNEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::([0-9]{1,5}))?$")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting and what is wrong."""


@dataclass(frozen=True, slots=True)
class ChannelDefinition:
    """A catalog channel and the status a device has for it until it says otherwise."""

    id: str
    default: str = "not_set"


@dataclass(frozen=True, slots=True)
class GatewayHost:
    """One allow-list entry: a gateway host (lower case) and port."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``requests`` per ``seconds`` for each user on the write endpoints."""

    requests: int
    seconds: int


@dataclass(frozen=True, slots=True)
class RsClient:
    """A technical user of the RS API and the channels it may send on (``x*``: a prefix)."""

    name: str
    channels: tuple[str, ...]

    def may_send(self, channel: str) -> bool:
        return any(
            channel.startswith(p[:-1]) if p.endswith("*") else channel == p for p in self.channels
        )


def _parse_rs_clients(value: object) -> object:
    if not isinstance(value, str):
        return value
    clients: list[RsClient] = []
    for raw in value.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, channels = entry.partition("=")
        name = name.strip()
        patterns = tuple(c.strip() for c in channels.split(",") if c.strip())
        if not sep or not name or not patterns:
            raise ValueError(f"entry {entry!r} is not name=channel,channel (or name=*)")
        if any(c.name == name for c in clients):
            raise ValueError(f"technical user {name!r} is listed twice")
        clients.append(RsClient(name, patterns))
    return tuple(clients)


def _parse_networks(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return tuple(
            ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()
        )
    except ValueError as exc:
        raise ValueError(f"expected addresses or CIDRs separated by commas ({exc})") from None


def _parse_channels(value: object) -> object:
    if not isinstance(value, str):
        return value
    channels: list[ChannelDefinition] = []
    seen: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        ident, _, status = entry.partition("=")
        ident, status = ident.strip(), (status.strip() or "not_set")
        if not _CHANNEL_ID.fullmatch(ident):
            raise ValueError(
                f"channel id {ident!r} must be 1-128 letters, digits, '.', '_', ':' or '-'"
            )
        if status not in CHANNEL_STATUSES:
            raise ValueError(
                f"channel {ident!r}: default must be one of {', '.join(CHANNEL_STATUSES)}"
            )
        if ident in seen:
            raise ValueError(f"channel {ident!r} is listed twice")
        seen.add(ident)
        channels.append(ChannelDefinition(ident, status))
    return tuple(channels)


def _parse_allowlist(value: object) -> object:
    if not isinstance(value, str):
        return value
    hosts: list[GatewayHost] = []
    for raw in value.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        match = _HOST.fullmatch(entry)
        if match is None:
            raise ValueError(f"entry {entry!r} is not host[:port]")
        port = int(match.group(2) or 443)
        if not 1 <= port <= 65535:
            raise ValueError(f"entry {entry!r}: port out of range")
        hosts.append(GatewayHost(match.group(1).lower(), port))
    return tuple(hosts)


def _parse_rate_limit(value: object) -> object:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in ("", "0"):
        return None
    match = re.fullmatch(r"([0-9]+)\s*/\s*([0-9]+)", text)
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ValueError("expected N/S (N requests per S seconds, e.g. 10/60) or 0 for off")
    return RateLimit(int(match.group(1)), int(match.group(2)))


def _parse_require_claim(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        return None
    name, sep, expected = value.partition("=")
    if not sep or not name.strip():
        raise ValueError("expected name=value")
    return (name.strip(), expected.strip())


class Settings(BaseSettings):
    """Everything the service can be told. Field ``x`` is the variable ``FDPUSH_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # FDPUSH_X= (empty) means "not set", not "empty value"
        extra="ignore",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,  # the docstring under a field is its description
    )

    # --- serving
    host: str = "127.0.0.1"
    """Listen address of `fdpush serve` (the image sets 0.0.0.0)."""
    port: int = Field(8080, ge=0, le=65535)
    """Listen port of `fdpush serve`: the client API, /health/* and /metrics."""
    base_path: str = ""
    """A path prefix in front of both client API layouts, e.g. /client/v1."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """debug, info, warning or error."""
    log_format: Literal["text", "json"] = "text"
    """text or json: one line per record on stderr."""
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Largest request body; larger ones get 413 M_TOO_LARGE."""
    max_header_bytes: int = Field(32 * 1024, ge=4096, le=1024 * 1024)
    """Largest request head (request line and header fields); 431 beyond."""
    max_header_fields: int = Field(100, ge=16, le=1000)
    """Most header fields in a request; 431 beyond."""
    api_docs: bool = True
    """Serve /docs (Swagger UI, from the package: works offline) and /openapi.json; 0: neither."""
    workers: int = Field(1, ge=1, le=64)
    """API processes of `fdpush serve` on one port (its --workers; PostgreSQL for more than 1)."""

    # --- storage
    database_url: str = "sqlite:///./fdpush.db"
    """sqlite:///path.db or postgresql://user[:password]@host:port/db (libpq parameters such as
    ?sslmode=verify-full work). A relative SQLite path in a config file is relative to that
    file.
    """
    database_pool_size: int | None = Field(None, ge=1, le=200)
    """PostgreSQL connections per process; unset: 32 for `serve`, shared out among its
    --workers, and 10 per delivery process of `fdpush worker`."""
    migrate_on_start: bool = True
    """Apply migrations when serving (several processes may start at once); 0 when a migration job
    does it.
    """
    master_key: SecretStr | None = None
    """Base64 of 32 random bytes (openssl rand -base64 32); seals every stored device key. Required
    unless FDPUSH_AUTH_MODE=dev. Back it up: without it nothing stored can be opened.
    """
    master_key_file: Path = Path("./fdpush.master-key")
    """Used when FDPUSH_MASTER_KEY is unset: read if present (must be owner-only); in dev mode
    generated once, with a warning.
    """

    # --- the Client-FD API's rules
    channels: Annotated[tuple[ChannelDefinition, ...], NoDecode] = ()
    """The channel catalog: id[=enabled|disabled],... ; a plain id defaults to not_set."""
    encryption: Literal["required", "optional", "forbidden"] = "required"
    """required, optional or forbidden: whether pushers carry an encryption block."""
    gateway_allowlist: Annotated[tuple[GatewayHost, ...], NoDecode] = ()
    """host[:port];host2[:port] of the Push Gateways pushers may name (port 443 when omitted).
    Empty: none allowed.
    """
    gateway_allow_http: bool = False
    """Allow plain-http gateway URLs (tests only)."""
    max_pushers_per_user: int = Field(20, ge=1, le=10_000)
    """Pushers one user may have."""
    rate_limit: Annotated[RateLimit | None, NoDecode] = RateLimit(30, 60)
    """Writes (pushers/set, POST channels) per user: N/S is N requests per S seconds, 0 is off.
    Counted per process.
    """

    # --- events in (the internal API for the Fachdienst's business logic)
    internal_api_key: SecretStr | None = None
    """The bearer key of the internal events API; unset, the events API refuses every call."""
    internal_host: str | None = None
    """Listen address of the internal API's own listener (default: FDPUSH_HOST)."""
    internal_port: int | None = Field(None, ge=0, le=65535)
    """Give the internal events API a listener of its own on this port (then it is not on the
    client port).
    """
    max_events_per_batch: int = Field(100, ge=1, le=1000)
    """Events per POST /internal/v1/events/batch."""
    internal_tls_cert: Path | None = None
    """Server certificate (PEM) of the internal listener: set with its key and client CA, the
    internal listener speaks TLS and requires client certificates.
    """
    internal_tls_key: Path | None = None
    """The private key of FDPUSH_INTERNAL_TLS_CERT."""
    internal_tls_client_ca: Path | None = None
    """The CA (PEM) that issues the technical users' client certificates."""

    # --- the ZETA Notification Service's RS API (/notification-service/v1, internal listener)
    rs_clients: Annotated[tuple[RsClient, ...], NoDecode] = ()
    """Technical users as name=channel,channel;name2=* (a channel ending in * is a prefix); a
    client certificate is the user whose name is its CN or a DNS SAN.
    """
    rs_idempotency_hours: int = Field(24, ge=1, le=24 * 30)
    """How long an Idempotency-Key (and its answer) is kept per technical user."""
    rs_max_pending: int = Field(1_000_000, ge=1)
    """More pending notifications than this in the outbox: new submissions get 503."""
    rs_rate_limit: Annotated[RateLimit | None, NoDecode] = None
    """Submissions per technical user: N/S is N requests per S seconds, 0 is off. Counted per
    process.
    """

    # --- delivery to the Push Gateways
    serve_worker: bool = True
    """`fdpush serve` runs a delivery worker in its process; 0 when `fdpush worker` delivers."""
    ready_max_pending_age_seconds: int = Field(900, ge=0)
    """/health/ready of `serve` with its worker: 503 while a notification waited longer (0: off)."""
    ready_max_worker_silence_seconds: int = Field(60, ge=5)
    """/health/ready of `serve` with its worker: 503 when it has not looked for work this long."""
    gateway_ca_file: Path | None = None
    """CA bundle that verifies the Push Gateways' certificates (default: the system store)."""
    gateway_client_cert: Path | None = None
    """Our client certificate for mutual TLS with the Push Gateways (goes with
    FDPUSH_GATEWAY_CLIENT_KEY).
    """
    gateway_client_key: Path | None = None
    """The private key of FDPUSH_GATEWAY_CLIENT_CERT."""
    gateway_timeout_seconds: float = Field(10.0, gt=0, le=120)
    """Timeout of one gateway request."""
    delivery_batch_size: int = Field(100, ge=1, le=100)
    """Notifications per gateway request (the spec's maximum is 100)."""
    delivery_concurrency_per_gateway: int = Field(4, ge=1, le=64)
    """Requests in flight per gateway and worker."""
    delivery_max_age_seconds: int = Field(12 * 3600, ge=60)
    """Give up (status failed) on a notification older than this."""
    delivery_lease_seconds: int = Field(10, ge=2, le=600)
    """A claim's lease: a dead worker's work returns after this."""
    delivery_prune_interval_seconds: float = Field(60.0, gt=0, le=86400)
    """How often sent payloads and finished events past their retention are pruned."""
    worker_processes: int = Field(1, ge=1, le=64)
    """Delivery processes of `fdpush worker` (its --processes)."""
    worker_metrics_host: str | None = None
    """Where `fdpush worker` serves /metrics and /health/* (default: FDPUSH_HOST)."""
    worker_metrics_port: int = Field(9101, ge=0, le=65535)
    """The port of `fdpush worker`'s /metrics and /health/*."""
    history_days: int = Field(0, ge=0, le=3650)
    """Keep sent payloads (sealed) this many days for the history endpoints; 0 is off."""

    # --- authentication
    auth_mode: Literal["jwt", "dev", "zeta"] = "jwt"
    """jwt (the identity provider's tokens; production), dev (HS256 test tokens) or zeta (the
    ZETA-User-Info header of the ZETA PEP, trusted only from the PEP).
    """
    auth_jwt_public_key_file: Path | None = None
    """PEM public key or certificate of the identity provider: EC P-256 gives ES256, RSA gives
    RS256/PS256.
    """
    auth_jwks_file: Path | None = None
    """A JWKS file instead of FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE (asymmetric keys, chosen by kid)."""
    auth_jwt_issuer: str | None = None
    """The iss tokens must carry (checked when set)."""
    auth_jwt_audience: str | None = None
    """The aud tokens must carry (checked when set)."""
    auth_jwt_leeway_seconds: int = Field(30, ge=0, le=600)
    """Clock skew allowed on exp, nbf and iat."""
    auth_user_claim: str = "sub"
    """The claim that carries the user id (e.g. the KVNR claim of the identity provider)."""
    auth_require_claim: Annotated[tuple[str, str] | None, NoDecode] = None
    """name=value a token must carry (e.g. the insured-person role), else 403."""
    auth_dev_secret: SecretStr | None = None
    """The HS256 secret of dev mode (at least 32 bytes)."""
    auth_zeta_trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """zeta mode: the addresses or CIDRs of the ZETA PEP, separated by commas; requests from
    anywhere else get 401.
    """
    tls_cert: Path | None = None
    """Server certificate (PEM) of the client listener: set with its key and client CA, the
    client listener speaks TLS and requires client certificates (zeta mode: the PEP's).
    """
    tls_key: Path | None = None
    """The private key of FDPUSH_TLS_CERT."""
    tls_client_ca: Path | None = None
    """The CA (PEM) that issues the client certificates the client listener requires."""

    _parse_channels = field_validator("channels", mode="before")(_parse_channels)
    _parse_allowlist = field_validator("gateway_allowlist", mode="before")(_parse_allowlist)
    _parse_rate_limit = field_validator("rate_limit", "rs_rate_limit", mode="before")(
        _parse_rate_limit
    )
    _parse_rs_clients = field_validator("rs_clients", mode="before")(_parse_rs_clients)
    _parse_networks = field_validator("auth_zeta_trusted_proxies", mode="before")(_parse_networks)
    _parse_require_claim = field_validator("auth_require_claim", mode="before")(
        _parse_require_claim
    )

    @field_validator("base_path")
    @classmethod
    def _check_base_path(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value):
            raise ValueError("must be empty or a path such as /client/v1")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    def check_delivery(self) -> None:
        """The gateway TLS files exist and come as a pair."""
        if (self.gateway_client_cert is None) != (self.gateway_client_key is None):
            raise ConfigError(
                "FDPUSH_GATEWAY_CLIENT_CERT and FDPUSH_GATEWAY_CLIENT_KEY go together (mutual TLS)"
            )
        for name, path in (
            ("FDPUSH_GATEWAY_CA_FILE", self.gateway_ca_file),
            ("FDPUSH_GATEWAY_CLIENT_CERT", self.gateway_client_cert),
            ("FDPUSH_GATEWAY_CLIENT_KEY", self.gateway_client_key),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: no such file: {path}")

    def client_tls(self) -> bool:
        """Whether the client listener speaks mutual TLS (all three files, or none)."""
        return _mutual_tls("FDPUSH_TLS", (self.tls_cert, self.tls_key, self.tls_client_ca))

    def internal_tls(self) -> bool:
        """Whether the internal listener speaks mutual TLS (all three files, or none)."""
        files = (self.internal_tls_cert, self.internal_tls_key, self.internal_tls_client_ca)
        if not _mutual_tls("FDPUSH_INTERNAL_TLS", files):
            return False
        if self.internal_port is None:
            raise ConfigError(
                "FDPUSH_INTERNAL_TLS_* need the internal listener of its own (FDPUSH_INTERNAL_PORT)"
            )
        return True

    def master_key_bytes(self) -> bytes | None:
        """The configured master key as 32 bytes, or None when it is to come from the key file."""
        if self.master_key is None:
            return None
        return decode_master_key(self.master_key.get_secret_value(), "FDPUSH_MASTER_KEY")

    def check_auth(self) -> None:
        """The authentication settings are complete (what serving needs, migrating does not)."""
        if self.auth_mode == "jwt":
            if (self.auth_jwt_public_key_file is None) == (self.auth_jwks_file is None):
                raise ConfigError(
                    "FDPUSH_AUTH_MODE=jwt needs exactly one of FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE "
                    "or FDPUSH_AUTH_JWKS_FILE (or FDPUSH_AUTH_MODE=dev for development)"
                )
            for name, path in (
                ("FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE", self.auth_jwt_public_key_file),
                ("FDPUSH_AUTH_JWKS_FILE", self.auth_jwks_file),
            ):
                if path is not None and not path.is_file():
                    raise ConfigError(f"{name}: no such file: {path}")
        if (
            self.auth_mode == "zeta"
            and not self.auth_zeta_trusted_proxies
            and not self.client_tls()
        ):
            raise ConfigError(
                "FDPUSH_AUTH_MODE=zeta trusts the ZETA-User-Info header only from the PEP: set "
                "FDPUSH_AUTH_ZETA_TRUSTED_PROXIES or client certificates for the client listener "
                "(FDPUSH_TLS_CERT, FDPUSH_TLS_KEY, FDPUSH_TLS_CLIENT_CA)"
            )
        if self.auth_mode == "dev":
            secret = self.auth_dev_secret.get_secret_value() if self.auth_dev_secret else ""
            if len(secret.encode()) < 32:
                raise ConfigError(
                    "FDPUSH_AUTH_DEV_SECRET: dev authentication needs a secret of at least 32 bytes"
                )


def _mutual_tls(prefix: str, files: tuple[Path | None, Path | None, Path | None]) -> bool:
    if all(f is None for f in files):
        return False
    names = (f"{prefix}_CERT", f"{prefix}_KEY", f"{prefix}_CLIENT_CA")
    if any(f is None for f in files):
        raise ConfigError(f"{', '.join(names)} go together (mutual TLS)")
    for name, path in zip(names, files, strict=True):
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}: no such file: {path}")
    return True


def decode_master_key(text: str, source: str) -> bytes:
    """Base64 text → 32 key bytes, or a ConfigError that names ``source``."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{source}: not valid Base64") from exc
    if len(key) != 32:
        raise ConfigError(f"{source}: must be 32 bytes (Base64 of 32 random bytes)")
    return key


def load_settings(
    config_file: str | os.PathLike[str] | None = None, *, for_serving: bool = True
) -> Settings:
    """Read the settings once; raise :class:`ConfigError` naming the first bad setting.

    ``for_serving=False`` skips the authentication checks, for commands such as ``migrate``
    that touch only the database. A name in the config file that is no setting is an error
    (with a suggestion); relative paths in the file are relative to the file's folder.
    """
    config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE") or None
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    overrides: dict[str, str] = {}
    if config_file is not None:
        values = _read_config_file(Path(config_file))
        problems = unknown_settings(values, source=f"in {config_file}")
        if problems:
            raise ConfigError(problems[0])
        overrides = _file_paths_made_absolute(values, Path(config_file), os.environ)
    try:
        settings = Settings(_env_file=Path(config_file) if config_file else None, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
    settings.master_key_bytes()
    if for_serving:
        settings.check_auth()
        settings.check_delivery()
    return settings


def _describe(error: Mapping[str, object]) -> str:
    """One pydantic error → ``FDPUSH_NAME: what is wrong``."""
    loc = error["loc"]
    field = str(loc[0]) if isinstance(loc, tuple) and loc else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{ENV_PREFIX}{field.upper()}: {message}"


# --- names that are no setting, and relative paths in a config file ------------------------------

_KNOWN_ELSEWHERE = {f"{ENV_PREFIX}CONFIG_FILE"}


def _setting_names() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | _KNOWN_ELSEWHERE


def unknown_settings(
    names: Mapping[str, object], *, source: str = "in the environment"
) -> list[str]:
    """One line per name in ``names`` that looks meant for fdpush but is no setting.

    Environment names count only with the ``FDPUSH_`` prefix (other programs share it); in a
    config file every name counts. Each line suggests the nearest setting when one is close.
    """
    known = sorted(_setting_names())
    problems = []
    for name in names:
        upper = name.upper()
        if upper in known:
            continue
        if source == "in the environment" and not upper.startswith(ENV_PREFIX):
            continue
        candidate = upper if upper.startswith(ENV_PREFIX) else ENV_PREFIX + upper
        close = difflib.get_close_matches(candidate, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else " (fdpush config example lists them)"
        problems.append(f"{name} ({source}): not a setting{hint}")
    return problems


def _read_config_file(path: Path) -> dict[str, str]:
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _path_fields() -> set[str]:
    return {
        name
        for name, field in Settings.model_fields.items()
        if field.annotation is Path or Path in get_args(field.annotation)
    }


def _file_paths_made_absolute(
    values: Mapping[str, str], config_file: Path, environ: Mapping[str, str]
) -> dict[str, str]:
    """The file's relative paths, made relative to the file's folder (as init arguments).

    Only for settings the environment does not set: the environment still wins.
    """
    folder = config_file.resolve().parent
    paths = _path_fields()
    overrides: dict[str, str] = {}
    for name, value in values.items():
        field = name.upper().removeprefix(ENV_PREFIX).lower()
        if not value or environ.get(name.upper()) or field not in Settings.model_fields:
            continue
        if field in paths and not Path(value).is_absolute():
            overrides[field] = str(folder / value)
        elif field == "database_url" and value.startswith("sqlite:///"):
            path = value.removeprefix("sqlite:///")
            if path and not path.startswith(("/", ":memory:")):
                overrides[field] = "sqlite:///" + str(folder / path)
    return overrides


# --- fdpush config check, fdpush config example ------------------------------------------------


def config_problems(
    config_file: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> list[str]:
    """Every problem of a configuration, one line each, without starting or creating anything.

    What ``serve`` would refuse, plus names that are no setting and a missing master key.
    """
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG_FILE") or None
    problems = unknown_settings(environ)
    if config_file is not None and not Path(config_file).is_file():
        return [*problems, f"config file {config_file} does not exist"]
    overrides: dict[str, str] = {}
    if config_file is not None:
        values = _read_config_file(Path(config_file))
        problems += unknown_settings(values, source=f"in {config_file}")
        overrides = _file_paths_made_absolute(values, Path(config_file), environ)
    known = set(Settings.model_fields)
    for name, value in environ.items():  # ``environ`` as the environment: it wins over the file
        field = name.upper().removeprefix(ENV_PREFIX).lower()
        if name.upper().startswith(ENV_PREFIX) and field in known and value:
            overrides[field] = value
    try:
        settings = Settings(_env_file=Path(config_file) if config_file else None, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        return problems + [_describe(error) for error in exc.errors()]
    for check in (settings.master_key_bytes, settings.check_auth, settings.check_delivery):
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        check_master_key(settings)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


def _example_value(value: object) -> str:
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, RateLimit):
        return f"{value.requests}/{value.seconds}"
    if isinstance(value, Path):
        return value.as_posix() if value.is_absolute() else f"./{value.as_posix()}"
    return str(value)


def _sections() -> dict[str, str]:
    """Field name → the ``# --- section`` comment above it in the Settings class."""
    sections: dict[str, str] = {}
    current = ""
    try:
        source = inspect.getsource(Settings)
    except OSError:  # installed without sources: one list without headings
        return sections
    for line in source.splitlines():
        heading = re.match(r"^    # --- (.+)$", line)
        field = re.match(r"^    ([a-z_]+): ", line)
        if heading:
            current = heading.group(1)
        elif field:
            sections[field.group(1)] = current
    return sections


def example_config() -> str:
    """A commented configuration file: every setting, its meaning and its default.

    Every line is commented out, so the file as it is changes nothing; uncomment what you set.
    """
    out = [
        "# fdpush configuration: FDPUSH_*=value lines, for `fdpush --config FILE` or the",
        "# environment (which wins over the file). Every setting is listed with its default,",
        "# commented out. Relative paths are relative to this file's folder.",
        "# Made by `fdpush config example`; check a configuration with `fdpush config check`.",
    ]
    sections = _sections()
    last_section = None
    for name, field in Settings.model_fields.items():
        section = sections.get(name, "")
        if section != last_section:
            out += ["", f"# === {section}" if section else "# ==="]
            last_section = section
        description = " ".join((field.description or "").split())
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else ()
        out.append("")
        out += [f"# {line}" for line in _wrap(description)]
        if choices and not any(str(choice) in description for choice in choices):
            out.append(f"# One of: {', '.join(map(str, choices))}.")
        out.append(f"#{ENV_PREFIX}{name.upper()}={_example_value(field.default)}")
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 98) -> list[str]:
    return textwrap.wrap(text, width) or ["(no description)"]


def check_master_key(settings: Settings) -> None:
    """Outside dev mode a master key must exist: configured, or in the key file.

    Generating one is a development convenience only: a production service that made its own
    key would seal devices' keys under a secret nobody has backed up.
    """
    if settings.master_key is not None or settings.auth_mode == "dev":
        return
    if not settings.master_key_file.exists():
        raise ConfigError(
            f"FDPUSH_MASTER_KEY: required with FDPUSH_AUTH_MODE={settings.auth_mode} (no key "
            f"file at {settings.master_key_file}); set it to Base64 of 32 random bytes, e.g. "
            "from: openssl rand -base64 32 (and back it up)"
        )


def resolve_master_key(settings: Settings) -> bytes:
    """The master key: ``FDPUSH_MASTER_KEY``, else the key file, else a new key file.

    A new key file is the development default: it is created owner-only, with a warning, so
    that the embedded SQLite setup works out of the box. Production sets FDPUSH_MASTER_KEY.
    """
    configured = settings.master_key_bytes()
    if configured is not None:
        return configured
    check_master_key(settings)
    path = settings.master_key_file
    source = f"FDPUSH_MASTER_KEY_FILE ({path})"
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{source}: readable by others; run: chmod 600 {path}")
        return decode_master_key(path.read_text(), source)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return resolve_master_key(settings)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    logging.getLogger(__name__).warning(
        "generated a new master key in %s (owner-only). Keys of registered devices are sealed "
        "under it: back it up, and in production set FDPUSH_MASTER_KEY instead.",
        path,
    )
    return resolve_master_key(settings)
