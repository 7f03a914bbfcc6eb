"""The client kit's HTTP client (docs/client-kit.md) against the real service, in both layouts.

Each test talks to a running ``fdpush serve`` (SQLite and PostgreSQL) the way an app would,
and checks what the service stored or answered — not only that the client returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from conftest import Service, dev_token, new_user
from fdpush.client import ApiError, Channel, FachdienstClient, Keyring, KeyringError

GATEWAY = "https://gateway.test/push/v1/"
APP_ID = "de.gematik.erezept.apns"
# The conftest catalog: erp.task.activate=enabled, erp.communication.new (not_set),
# erp.task.close=disabled.
CATALOG = [
    Channel("erp.task.activate", "enabled"),
    Channel("erp.communication.new", "not_set"),
    Channel("erp.task.close", "disabled"),
]

LAYOUTS = pytest.mark.parametrize("layout", ["current", "seed"])


def client_for(
    service: Service, user: str, layout: str = "current", **kwargs: object
) -> FachdienstClient:
    return FachdienstClient(service.base_url, token=dev_token(user), layout=layout, **kwargs)  # type: ignore[arg-type]


def pushkey() -> str:
    return f"pk/{uuid.uuid4().hex}+="


@LAYOUTS
def test_a_pusher_registered_with_a_keyring_is_listed_without_keys_and_deleted(
    service: Service, layout: str
) -> None:
    user, key = new_user(), pushkey()
    keyring = Keyring.create()
    iss = keyring.encryption()["iss"]
    with client_for(service, user, layout) as fd:
        fd.register_pusher(
            app_id=APP_ID,
            pushkey=key,
            url=GATEWAY,
            app_display_name="E-Rezept",
            device_display_name="Anna's iPhone",
            keyring=keyring,
            data={"format": "event_id_only"},
            profile_tag="tag-1",
        )
        assert not keyring.holds_iss  # accepted: the app forgets its iss
        [pusher] = fd.pushers()
        assert pusher.pushkey == key and pusher.app_id == APP_ID and pusher.kind == "http"
        assert pusher.device_display_name == "Anna's iPhone" and pusher.profile_tag == "tag-1"
        assert pusher.data == {"format": "event_id_only", "url": GATEWAY}
        rows = service.query(
            "SELECT key_identifier FROM pushers WHERE user_id = ? AND pushkey = ?",
            (service.pseudonym(user), service.pushkey_index(key)),
        )
        assert rows == [(keyring.key_identifier,)]
        assert not service.query("SELECT 1 FROM pushers WHERE data LIKE ?", (f"%{iss}%",))
        fd.delete_pusher(app_id=APP_ID, pushkey=key)
        assert fd.pushers() == []
        fd.delete_pusher(app_id=APP_ID, pushkey=key)  # idempotent


@LAYOUTS
def test_channels_are_read_and_changed_in_each_layouts_spelling(
    service: Service, layout: str
) -> None:
    user, key = new_user(), pushkey()
    with client_for(service, user, layout) as fd:
        fd.register_pusher(
            app_id=APP_ID,
            pushkey=key,
            url=GATEWAY,
            app_display_name="E-Rezept",
            device_display_name="Phone",
            keyring=Keyring.create(),
        )
        assert fd.channels() == CATALOG
        assert fd.device_channels(key) == CATALOG
        fd.set_channels(key, {"erp.communication.new": "enabled", "erp.task.activate": "disabled"})
        assert fd.device_channels(key) == [
            Channel("erp.task.activate", "disabled"),
            Channel("erp.communication.new", "enabled"),
            Channel("erp.task.close", "disabled"),
        ]
        fd.set_channels(key, {"erp.task.activate": "not_set"})
        assert fd.device_channels(key)[0] == Channel("erp.task.activate", "not_set")


def test_refusals_come_back_as_api_errors_with_their_errcode(service: Service) -> None:
    user = new_user()
    with client_for(service, user) as fd:
        with pytest.raises(ApiError) as missing:
            fd.device_channels("not-my-device")
        assert (missing.value.status, missing.value.errcode) == (404, "M_NOT_FOUND")
        with pytest.raises(ApiError) as invalid:
            fd.register_pusher(
                app_id="a" * 65,
                pushkey=pushkey(),
                url=GATEWAY,
                app_display_name="x",
                device_display_name="y",
                keyring=Keyring.create(),
            )
        assert (invalid.value.status, invalid.value.errcode) == (400, "M_INVALID_PARAM")
        assert "app_id" in invalid.value.error
        with pytest.raises(ApiError) as not_allowed:
            fd.register_pusher(
                app_id=APP_ID,
                pushkey=pushkey(),
                url="https://evil.example/push/v1/",
                app_display_name="x",
                device_display_name="y",
                keyring=Keyring.create(),
            )
        assert not_allowed.value.errcode == "M_INVALID_PARAM"
        assert fd.pushers() == []  # nothing stored by the refused requests
    with FachdienstClient(service.base_url, token="not-a-token") as stranger:
        with pytest.raises(ApiError) as unknown:
            stranger.pushers()
        assert (unknown.value.status, unknown.value.errcode) == (401, "M_UNKNOWN_TOKEN")


def test_a_refused_registration_keeps_the_iss_and_a_forgotten_one_is_not_sent(
    service: Service,
) -> None:
    keyring = Keyring.create()
    with client_for(service, new_user()) as fd:
        with pytest.raises(ApiError):
            fd.register_pusher(
                app_id=APP_ID,
                pushkey=pushkey(),
                url="https://nowhere.example/push/v1/",
                app_display_name="x",
                device_display_name="y",
                keyring=keyring,
            )
        assert keyring.holds_iss  # the app may try again with the same keyring
        keyring.forget_iss()
        with pytest.raises(KeyringError, match="forgotten"):
            fd.register_pusher(
                app_id=APP_ID,
                pushkey=pushkey(),
                url=GATEWAY,
                app_display_name="x",
                device_display_name="y",
                keyring=keyring,
            )
        assert fd.pushers() == []


def test_the_token_function_is_asked_for_every_request(service: Service) -> None:
    user = new_user()
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return dev_token(user)

    with FachdienstClient(service.base_url, token=token) as fd:
        fd.channels()
        fd.pushers()
    assert len(calls) == 2


def test_rate_limits_carry_retry_after_and_a_base_path_is_honoured(
    start_service: Callable[..., Service],
) -> None:
    limited = start_service(FDPUSH_RATE_LIMIT="1/60", FDPUSH_BASE_PATH="/client/v1")
    user = new_user()
    with client_for(limited, user, base_path="/client/v1") as fd:
        fd.register_pusher(
            app_id=APP_ID,
            pushkey=pushkey(),
            url=GATEWAY,
            app_display_name="x",
            device_display_name="y",
            keyring=Keyring.create(),
        )
        with pytest.raises(ApiError) as limit:
            fd.delete_pusher(app_id=APP_ID, pushkey="other")
        assert (limit.value.status, limit.value.errcode) == (429, "M_LIMIT_EXCEEDED")
        assert limit.value.retry_after_ms is not None and 0 < limit.value.retry_after_ms <= 60_000
        assert len(fd.pushers()) == 1  # reads are not limited
    with client_for(limited, user) as no_prefix, pytest.raises(ApiError) as wrong:
        no_prefix.pushers()
    assert (wrong.value.status, wrong.value.errcode) == (404, "M_UNRECOGNIZED")
