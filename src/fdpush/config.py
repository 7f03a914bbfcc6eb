"""The one typed settings object, read once at start-up from ``FDPUSH_*`` variables.

Values come from the environment and, optionally, from a config file in ``KEY=value`` form
(``fdpush --config FILE`` or ``FDPUSH_CONFIG_FILE``); the environment wins over the file.
A bad value stops start-up with :class:`ConfigError`, whose message names the setting.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "ChannelDefinition",
    "ConfigError",
    "GatewayHost",
    "RateLimit",
    "Settings",
    "load_settings",
    "resolve_master_key",
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
    )

    # --- serving
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    base_path: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    workers: int = Field(1, ge=1, le=64)  # API processes of `fdpush serve` (PostgreSQL for > 1)

    # --- storage
    database_url: str = "sqlite:///./fdpush.db"
    # PostgreSQL connections per API process; unset: 32, shared out among `serve --workers`
    database_pool_size: int | None = Field(None, ge=1, le=200)
    migrate_on_start: bool = True
    master_key: SecretStr | None = None
    master_key_file: Path = Path("./fdpush.master-key")

    # --- the Client-FD API's rules
    channels: Annotated[tuple[ChannelDefinition, ...], NoDecode] = ()
    encryption: Literal["required", "optional", "forbidden"] = "required"
    gateway_allowlist: Annotated[tuple[GatewayHost, ...], NoDecode] = ()
    gateway_allow_http: bool = False
    max_pushers_per_user: int = Field(20, ge=1, le=10_000)
    rate_limit: Annotated[RateLimit | None, NoDecode] = RateLimit(30, 60)

    # --- events in (the internal API for the Fachdienst's business logic)
    internal_api_key: SecretStr | None = None
    internal_host: str | None = None
    internal_port: int | None = Field(None, ge=0, le=65535)
    max_events_per_batch: int = Field(100, ge=1, le=1000)

    # --- delivery to the Push Gateways
    serve_worker: bool = True
    gateway_ca_file: Path | None = None
    gateway_client_cert: Path | None = None
    gateway_client_key: Path | None = None
    gateway_timeout_seconds: float = Field(10.0, gt=0, le=120)
    delivery_batch_size: int = Field(100, ge=1, le=100)
    delivery_concurrency_per_gateway: int = Field(4, ge=1, le=64)
    delivery_max_age_seconds: int = Field(12 * 3600, ge=60)
    delivery_lease_seconds: int = Field(10, ge=2, le=600)
    history_days: int = Field(0, ge=0, le=3650)

    # --- authentication
    auth_mode: Literal["jwt", "dev"] = "jwt"
    auth_jwt_public_key_file: Path | None = None
    auth_jwks_file: Path | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_leeway_seconds: int = Field(30, ge=0, le=600)
    auth_user_claim: str = "sub"
    auth_require_claim: Annotated[tuple[str, str] | None, NoDecode] = None
    auth_dev_secret: SecretStr | None = None

    _parse_channels = field_validator("channels", mode="before")(_parse_channels)
    _parse_allowlist = field_validator("gateway_allowlist", mode="before")(_parse_allowlist)
    _parse_rate_limit = field_validator("rate_limit", mode="before")(_parse_rate_limit)
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
        if self.auth_mode == "dev":
            secret = self.auth_dev_secret.get_secret_value() if self.auth_dev_secret else ""
            if len(secret.encode()) < 32:
                raise ConfigError(
                    "FDPUSH_AUTH_DEV_SECRET: dev authentication needs a secret of at least 32 bytes"
                )


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
    that touch only the database.
    """
    config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE") or None
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    try:
        settings = Settings(_env_file=Path(config_file) if config_file else None)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ENV_PREFIX + "_".join(str(part) for part in error["loc"][:1]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
    settings.master_key_bytes()
    if for_serving:
        settings.check_auth()
        settings.check_delivery()
    return settings


def resolve_master_key(settings: Settings) -> bytes:
    """The master key: ``FDPUSH_MASTER_KEY``, else the key file, else a new key file.

    A new key file is the development default: it is created owner-only, with a warning, so
    that the embedded SQLite setup works out of the box. Production sets FDPUSH_MASTER_KEY.
    """
    configured = settings.master_key_bytes()
    if configured is not None:
        return configured
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
