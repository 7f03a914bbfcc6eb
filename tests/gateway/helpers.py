"""Helpers for the development gateway's tests: request builders and the spec's schemas.

Error and result bodies are checked against ``push_gateway_openapi.yaml`` itself (loaded from
``spec/current``), with jsonschema, so the tests follow the spec, not our reading of it.
"""

from __future__ import annotations

import base64
import os
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from fdpush.gateway_api import Device, EncryptedNotification, PlainNotification

SPEC_PATH = Path(__file__).resolve().parents[2] / "spec" / "current" / "push_gateway_openapi.yaml"
ENCRYPTED = "/push/v1/notifyEncrypted/batch"
PLAIN_BATCH = "/push/v1/notify/batch"
NOTIFY = "/push/v1/notify"
SEED_NOTIFY = "/_matrix/push/v1/notify"
APNS_APP = "de.gematik.erezept.apns"
FCM_APP = "de-gematik-erezept.erezept.firebase"


# --- the spec ----------------------------------------------------------------------------------


@cache
def _spec_registry() -> Registry:
    document = yaml.safe_load(SPEC_PATH.read_text())
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource("spec", resource)


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _validator(pointer: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"spec#/{pointer}"}, registry=_spec_registry())


def spec_response_errors(endpoint: str, status: int, body: Any) -> list[str]:
    """What is wrong with ``body`` as the spec's ``status`` answer of ``endpoint`` (``[]``: ok)."""
    spec_path = endpoint.removeprefix("/push/v1")
    pointer = _pointer(
        "paths",
        spec_path,
        "post",
        "responses",
        str(status),
        "content",
        "application/json",
        "schema",
    )
    return [error.message for error in _validator(pointer).iter_errors(body)]


def assert_spec_response(endpoint: str, status: int, body: Any) -> None:
    """``body`` is a valid answer with ``status`` of ``endpoint`` according to the spec."""
    errors = spec_response_errors(endpoint, status, body)
    assert not errors, f"not the spec's {status} body for {endpoint}: {errors} in {body}"


def spec_request_valid(endpoint: str, body: Any) -> bool:
    """Whether the spec's request schema of ``endpoint`` accepts ``body``."""
    spec_path = endpoint.removeprefix("/push/v1")
    pointer = _pointer(
        "paths", spec_path, "post", "requestBody", "content", "application/json", "schema"
    )
    return _validator(pointer).is_valid(body)


# --- request builders --------------------------------------------------------------------------


def ciphertext() -> str:
    """A ciphertext of the spec's shape: Base64 of 12 + 1024 + 16 random bytes (1404 chars)."""
    return base64.b64encode(os.urandom(1052)).decode()


def new_pushkey() -> str:
    """A fresh pushkey, with the characters real ones contain."""
    return f"pk/{uuid.uuid4().hex}+="


def encrypted_notification(
    pushkey: str | None = None, app_id: str = APNS_APP, **fields: Any
) -> dict[str, Any]:
    """A valid ``EncryptedNotification``; ``fields`` replace or add fields."""
    notification: EncryptedNotification = {
        "ciphertext": ciphertext(),
        "time_message_encrypted": "2025-06",
        "key_identifier": str(uuid.uuid4()),
        "prio": "high",
        "device": {
            "app_id": app_id,
            "pushkey": pushkey or new_pushkey(),
            "pushkey_ts": 1750000000,
            "data": {"format": "event_id_only"},
            "tweaks": {},
        },
    }
    return {**notification, **fields}


def encrypted_item(item_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """One valid ``notifyEncrypted/batch`` item (see :func:`encrypted_notification`)."""
    return {"id": item_id or uuid.uuid4().hex, "notification": encrypted_notification(**kwargs)}


def plain_notification(*devices: Device, **fields: Any) -> dict[str, Any]:
    """A valid ``PlainNotification`` to ``devices`` (default: one fresh APNs device);
    ``fields`` replace or add fields."""
    notification: PlainNotification = {
        "event_id": f"$event-{uuid.uuid4().hex[:8]}",
        "prio": "high",
        "content": {"channel": "erp.task.activate"},
        "devices": list(devices) or [device()],
    }
    return {**notification, **fields}


def device(pushkey: str | None = None, app_id: str = APNS_APP) -> Device:
    """A ``Device`` with a fresh pushkey unless one is given."""
    return {"app_id": app_id, "pushkey": pushkey or new_pushkey(), "pushkey_ts": 1750000000}


def plain_item(item_id: str | None = None, *devices: Device, **fields: Any) -> dict:
    """One valid ``notify/batch`` item."""
    return {
        "id": item_id or uuid.uuid4().hex,
        "notification": plain_notification(*devices, **fields),
    }
