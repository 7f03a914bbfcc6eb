"""The gateway's configuration file (TOML), read once at start-up into one typed object.

``mode = "development"`` runs the recording development gateway; ``mode = "production"`` the
gateway that forwards to APNs and FCM. Relative file names are relative to the configuration
file's folder. See ``docs/gateway.md`` for every key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator

from fdpush.gateway.trouble import MIN_REQUEST_SIZE_KB, Limits

__all__ = [
    "ApnsApp",
    "AppConfig",
    "DeliveryConfig",
    "FcmApp",
    "GatewayConfig",
    "ListenConfig",
    "ProviderConfig",
    "load_config",
]

APNS_PRODUCTION_URL = "https://api.push.apple.com"
FCM_URL = "https://fcm.googleapis.com"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Section):
    """Where the gateway listens, and whose client certificates it accepts."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8443
    cert: FilePath | None = None
    key: FilePath | None = None
    client_ca: FilePath | None = None
    # RFC 4514 subjects (``CN=erp.example,O=Example``) of the Fachdienste allowed in; empty:
    # every certificate the CA issued.
    allowed_subjects: tuple[str, ...] = ()


class LimitsConfig(_Section):
    """The request limits of the Push Gateway API."""

    max_batch_size: Annotated[int, Field(ge=1)] = 100
    max_notification_size_kb: Annotated[int, Field(ge=1)] = 64
    max_request_size_kb: Annotated[int, Field(ge=MIN_REQUEST_SIZE_KB)] = 1024

    def as_limits(self) -> Limits:
        """The same limits as the development gateway's dataclass."""
        return Limits(self.max_batch_size, self.max_notification_size_kb, self.max_request_size_kb)


class DeliveryConfig(_Section):
    """Answering, retrying, queueing and remembering rejections."""

    # Every item is answered within this time: delivered, rejected, or failed. Below the
    # Fachdienste's request timeout (fdpush's sender: 10 s), so an answer is never too late.
    answer_within_seconds: Annotated[float, Field(gt=0, le=300)] = 8.0
    retry_base_seconds: Annotated[float, Field(gt=0)] = 0.2
    retry_max_seconds: Annotated[float, Field(gt=0)] = 5.0
    # FCM: "wait at least one minute" after QUOTA_EXCEEDED.
    quota_backoff_seconds: Annotated[float, Field(ge=60)] = 60.0
    # Items waiting for or in the hands of one provider; more → 503 with Retry-After.
    queue_per_provider: Annotated[int, Field(ge=1)] = 10_000
    overload_retry_after_seconds: Annotated[int, Field(ge=1)] = 5
    rejection_memory_hours: Annotated[float, Field(gt=0)] = 24.0 * 30
    # Keeps the rejection memory across restarts (keyed hashes, never pushkeys); none: memory only.
    rejection_memory_file: Path | None = None


class ProviderConfig(_Section):
    """How to reach one provider (overridable for a sandbox or a mock)."""

    url: str
    ca_file: FilePath | None = None  # None: the system's trust store
    connections_per_app: Annotated[int, Field(ge=1, le=16)] = 1
    streams_per_app: Annotated[int, Field(ge=1, le=1000)] = 100
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0


class ApnsApp(_Section):
    """An iOS app: ``<bundle id>.apns``, token or certificate authentication."""

    app_id: Annotated[str, Field(pattern=r".+\.apns$")]
    key_file: FilePath | None = None  # .p8 (token authentication)
    key_id: str | None = None
    team_id: str | None = None
    # Provider JWT reuse: APNs wants 20..60 minutes between refreshes.
    token_refresh_minutes: Annotated[float, Field(ge=20, le=55)] = 40.0
    certificate: FilePath | None = None  # PEM (certificate authentication)
    certificate_key: FilePath | None = None
    push_type: Literal["alert", "background"] = "alert"

    @model_validator(mode="after")
    def _one_authentication(self) -> ApnsApp:
        token = (self.key_file, self.key_id, self.team_id)
        if all(token) and self.certificate is None:
            return self
        if self.certificate is not None and not any(token):
            return self
        raise ValueError(
            f"{self.app_id}: give key_file, key_id and team_id (token authentication) "
            "or certificate (and certificate_key), not both"
        )

    @property
    def topic(self) -> str:
        """The APNs topic: the bundle id."""
        return self.app_id.removesuffix(".apns")


class FcmApp(_Section):
    """An Android app: ``<project id>.<app>.firebase``, a service account of that project."""

    app_id: Annotated[str, Field(pattern=r"^[^.]+\..+\.firebase$")]
    service_account: FilePath

    @property
    def project_id(self) -> str:
        """The Firebase project: the app_id's first label."""
        return self.app_id.split(".", 1)[0]


AppConfig = ApnsApp | FcmApp


class GatewayConfig(_Section):
    """The whole configuration file."""

    mode: Literal["development", "production"] = "production"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "json"
    # Keys the pushkey references in logs (``pk:…``), so they stay the same across restarts and
    # replicas; none: a random key per process.
    log_reference_key_file: FilePath | None = None
    listen: ListenConfig = ListenConfig()
    limits: LimitsConfig = LimitsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    apns: ProviderConfig = ProviderConfig(url=APNS_PRODUCTION_URL)
    fcm: ProviderConfig = ProviderConfig(url=FCM_URL)
    apns_apps: tuple[ApnsApp, ...] = ()
    fcm_apps: tuple[FcmApp, ...] = ()

    @model_validator(mode="after")
    def _checks(self) -> GatewayConfig:
        ids = [app.app_id for app in self.apns_apps] + [app.app_id for app in self.fcm_apps]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"app_id configured twice: {', '.join(twice)}")
        if self.mode == "production" and (
            self.listen.cert is None or self.listen.key is None or self.listen.client_ca is None
        ):
            raise ValueError("production mode needs listen.cert, listen.key and listen.client_ca")
        return self

    def apps(self) -> dict[str, AppConfig]:
        """Every configured app by its app_id."""
        apps: dict[str, AppConfig] = {app.app_id: app for app in self.apns_apps}
        apps.update({app.app_id: app for app in self.fcm_apps})
        return apps


def _resolve(value: object, base: Path) -> object:
    if isinstance(value, dict):
        return {k: _resolve(v, base) if k not in _PATH_KEYS else base / v for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


_PATH_KEYS = {
    "cert",
    "key",
    "client_ca",
    "ca_file",
    "key_file",
    "certificate",
    "certificate_key",
    "service_account",
    "rejection_memory_file",
    "log_reference_key_file",
}


def load_config(path: Path) -> GatewayConfig:
    """Read and check the configuration file (named files must exist); raises ValueError
    naming what is wrong."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    resolved = _resolve(raw, path.resolve().parent)
    try:
        return GatewayConfig.model_validate(resolved)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
