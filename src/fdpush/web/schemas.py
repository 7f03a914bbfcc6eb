"""Request and response models of the Client-FD API, and the parsing of request bodies.

Parsing follows one order, so a client always learns the most basic problem first:
``M_NOT_JSON`` (not JSON) → ``M_BAD_JSON`` (not an object) → ``M_MISSING_PARAM`` (naming every
missing field) → ``M_INVALID_PARAM`` (the first field of the wrong type or out of bounds).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from fdpush.domain.errors import InvalidParam, MissingParam
from fdpush.domain.models import ChannelState, EncryptionRequest, PusherRegistration
from fdpush.web.errors import BadJson, NotJson

__all__ = [
    "ChannelsBody",
    "ChannelsResponse",
    "EmptyResponse",
    "ErrorBody",
    "MessageResponse",
    "MessagesResponse",
    "PusherSetBody",
    "PushersResponse",
    "RateLimitedBody",
    "documented_body",
    "parse_channel_changes",
    "parse_json_object",
    "parse_pusher_set",
    "plain_text",
]

MAX_DATA_BYTES = 2048
MAX_CHANNEL_CHANGES = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def plain_text(name: str, value: str) -> str:
    """``value`` of a path or query parameter, or 400 when it carries control characters (they
    can name nothing stored, and PostgreSQL refuses NUL in text)."""
    if _CONTROL.search(value):
        raise InvalidParam(f"{name}: must not contain control characters")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _pushkey(value: str) -> str:
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= 512:
        raise ValueError("must be 1 to 512 bytes of UTF-8")
    return _no_control(value)


def _iss(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("must be exactly 64 hex digits")
    return value


def _period(value: str) -> str:
    if not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", value):  # ASCII digits, not any \d
        raise ValueError("must be a month as YYYY-MM")
    return value


def _key_identifier(value: str) -> str:
    if not re.fullmatch(r"[\x21-\x7e]{1,128}", value):
        raise ValueError("must be 1 to 128 printable ASCII characters")
    return value


Pushkey = Annotated[str, AfterValidator(_pushkey)]
AppId = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control)]
ShortText = Annotated[str, Field(max_length=256), AfterValidator(_no_control)]
Lang = Annotated[str, Field(max_length=32), AfterValidator(_no_control)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


def _also_spelled(aliases: dict[str, str]) -> Callable[[JsonDict], None]:
    """Document each field's other published spelling (its second ``validation_alias``).

    The schema then accepts what the parser accepts: either name, one of them required.
    """

    def extra(schema: JsonDict) -> None:
        properties: Any = schema["properties"]
        required: Any = schema.get("required", [])
        either: list[JsonDict] = []
        for name, alias in aliases.items():
            properties[alias] = {
                **properties[name],
                "title": alias,
                "description": f"Also accepted for {name}.",
            }
            if name in required:
                required.remove(name)
                either.append({"anyOf": [{"required": [name]}, {"required": [alias]}]})
        if either:
            schema["allOf"] = list(either)
        if not required:
            schema.pop("required", None)

    return extra


class EncryptionBody(_Strict):
    """The pusher's ``encryption`` object, in either published spelling."""

    model_config = ConfigDict(
        json_schema_extra=_also_spelled(
            {"iss": "initial_shared_secret", "time_iss_created": "initial_key_period"}
        )
    )

    method: str = Field(description="Always 'aes-hmac-sha256'.")
    iss: Annotated[str, AfterValidator(_iss)] = Field(
        validation_alias=AliasChoices("iss", "initial_shared_secret"),
        description="Hex of the 256-bit initial shared secret (also accepted: "
        "initial_shared_secret). Never stored.",
    )
    time_iss_created: Annotated[str, AfterValidator(_period)] = Field(
        validation_alias=AliasChoices("time_iss_created", "initial_key_period"),
        description="Month of the iss, YYYY-MM (also accepted: initial_key_period).",
    )
    key_identifier: Annotated[str, AfterValidator(_key_identifier)]


class PusherData(BaseModel):
    """Data for the pusher implementation; stored whole, forwarded minus ``url``."""

    model_config = ConfigDict(strict=True, extra="allow")
    url: str | None = Field(None, description="The Push Gateway's base URL ending in /push/v1/")
    format: str | None = None


class PusherSetBody(_Strict):
    """``POST pushers/set``: create or update (``kind: "http"``) or delete (``kind: null``)."""

    kind: Literal["http"] | None
    app_id: AppId
    pushkey: Pushkey
    app_display_name: ShortText | None = None
    device_display_name: ShortText | None = None
    profile_tag: ShortText | None = None
    lang: Lang | None = None
    data: PusherData | None = None
    encryption: EncryptionBody | None = None
    append: bool = False


class PusherOut(BaseModel):
    pushkey: str
    kind: str | None
    app_id: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | SkipJsonSchema[None] = None  # omitted when unset, never null
    lang: str
    data: dict[str, Any]


class PushersResponse(BaseModel):
    pushers: list[PusherOut]


class ChannelChange(_Strict):
    model_config = ConfigDict(json_schema_extra=_also_spelled({"id": "name", "status": "value"}))

    id: Annotated[str, Field(max_length=128)] = Field(
        validation_alias=AliasChoices("id", "name"), description="Channel id (seed: 'name')."
    )
    status: Literal["enabled", "disabled", "not_set"] = Field(
        validation_alias=AliasChoices("status", "value"), description="Seed spelling: 'value'."
    )


class ChannelsBody(_Strict):
    channels: Annotated[list[ChannelChange], Field(max_length=MAX_CHANNEL_CHANGES)]


class ChannelOut(BaseModel):
    id: str
    status: Literal["enabled", "disabled", "not_set"]


class ChannelsResponse(BaseModel):
    channels: list[ChannelOut]


class MessageResponse(BaseModel):
    identifier: str
    payload: dict[str, Any]


class MessagesResponse(BaseModel):
    messages: list[MessageResponse]
    next_batch: str | None = Field(
        None, description="Pass as ?from= to get the next (older) page; absent on the last page"
    )


class EmptyResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    errcode: str
    error: str


class RateLimitedBody(ErrorBody):
    retry_after_ms: int


# --- parsing ----------------------------------------------------------------------------------


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``M_NOT_JSON`` / ``M_BAD_JSON``."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotJson("Content not JSON") from None
    if not isinstance(value, dict):
        raise BadJson("Body must be a JSON object")
    return value


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of an operation whose handler reads ``model`` itself (the
    handlers parse bodies by hand, for the Matrix errors; this keeps the schema documented)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def validate_body(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        missing = [_where(e["loc"]) for e in errors if e["type"] == "missing"]
        if missing:
            raise MissingParam(missing) from None
        first = errors[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidParam(f"{_where(first['loc'])}: {message}") from None


def _absent(obj: dict[str, Any], *names: str) -> bool:
    return all(obj.get(name) is None for name in names)


def _missing_for_registration(raw: dict[str, Any], encryption_required: bool) -> list[str]:
    """Fields required because ``kind`` is not null (and the service requires encryption)."""
    missing = [
        name
        for name in ("app_display_name", "device_display_name", "lang", "data")
        if raw.get(name) is None
    ]
    data = raw.get("data")
    if isinstance(data, dict) and data.get("url") is None:
        missing.append("data.url")
    encryption = raw.get("encryption")
    if encryption is None and encryption_required:
        missing.append("encryption")
    if isinstance(encryption, dict):
        for primary, *aliases in (
            ("method",),
            ("iss", "initial_shared_secret"),
            ("time_iss_created", "initial_key_period"),
            ("key_identifier",),
        ):
            given = [encryption[n] for n in (primary, *aliases) if encryption.get(n) is not None]
            if not given:
                missing.append(f"encryption.{primary}")
            elif any(value != given[0] for value in given):
                raise InvalidParam(f"encryption.{primary} and {aliases[0]} disagree")
    return missing


def parse_pusher_set(
    raw: dict[str, Any], *, encryption_required: bool
) -> PusherRegistration | tuple[str, str]:
    """A registration (``kind`` not null) or the ``(app_id, pushkey)`` to delete."""
    missing = [name for name in ("app_id", "pushkey") if raw.get(name) is None]
    if "kind" not in raw:
        missing.insert(0, "kind")
    elif raw["kind"] is not None:
        missing += _missing_for_registration(raw, encryption_required)
    if missing:
        raise MissingParam(missing)
    body: PusherSetBody = validate_body(PusherSetBody, raw)
    if body.kind is None:
        return body.app_id, body.pushkey
    data = raw["data"]
    try:
        # ``data`` travels in every notification's ``device``, at most six levels down in the
        # gateway request ({"notifications": [{"notification": {"devices": [{"data": …}]}}]});
        # orjson, which writes that request, stops at 254 levels of nesting.
        orjson.dumps([[[[[[data]]]]]])
    except orjson.JSONEncodeError:
        raise InvalidParam("data: nested too deeply to be sent to the gateway") from None
    if len(orjson.dumps(data)) > MAX_DATA_BYTES:
        raise InvalidParam(f"data: at most {MAX_DATA_BYTES} bytes of JSON")
    if any("\x00" in k for k in data) or "\\u0000" in orjson.dumps(data).decode():
        raise InvalidParam("data: must not contain NUL characters")
    if not isinstance(data.get("url"), str):
        raise InvalidParam("data.url: must be a string")
    assert body.app_display_name is not None
    assert body.device_display_name is not None
    assert body.lang is not None
    enc = body.encryption
    return PusherRegistration(
        app_id=body.app_id,
        pushkey=body.pushkey,
        kind=body.kind,
        app_display_name=body.app_display_name,
        device_display_name=body.device_display_name,
        profile_tag=body.profile_tag,
        lang=body.lang,
        data=data,
        append=body.append,
        encryption=None
        if enc is None
        else EncryptionRequest(
            method=enc.method,
            iss=bytes.fromhex(enc.iss),
            time_iss_created=enc.time_iss_created,
            key_identifier=enc.key_identifier,
        ),
    )


def _missing_channel_members(raw: dict[str, Any]) -> list[str]:
    """Missing (or null) members, named in the spelling the client used (seed: name/value)."""
    channels = raw.get("channels")
    if channels is None:
        return ["channels"]
    missing: list[str] = []
    for index, item in enumerate(channels if isinstance(channels, list) else []):
        if not isinstance(item, dict):
            continue
        seed = not ({"id", "status"} & item.keys()) and bool({"name", "value"} & item.keys())
        for current, seed_name in (("id", "name"), ("status", "value")):
            if item.get(current) is None and item.get(seed_name) is None:
                missing.append(f"channels[{index}].{seed_name if seed else current}")
    return missing


def parse_channel_changes(raw: dict[str, Any]) -> list[ChannelState]:
    missing = _missing_channel_members(raw)
    if missing:
        raise MissingParam(missing)
    body: ChannelsBody = validate_body(ChannelsBody, raw)
    return [ChannelState(c.id, c.status) for c in body.channels]
