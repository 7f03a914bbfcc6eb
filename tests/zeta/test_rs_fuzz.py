"""No input makes the RS API answer a 5xx: random bodies, headers and paths (hypothesis)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Service
from delivery.e2e_helpers import ACTIVATE, INTERNAL_KEY, delivery_env, internal_client
from fdpush.gateway import GatewayThread, TestPki
from zeta.test_rs_api import RS, check_documented

_text = st.text(max_size=40)
_json: Any = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries(
        {
            "user": st.one_of(
                _json,
                st.fixed_dictionaries(
                    {"id_type": st.sampled_from(["kvnr", "telematik-id"]) | _text, "value": _text}
                ),
            ),
            "channel": st.sampled_from([ACTIVATE, "erp.task.close"]) | _text,
            "payload": _json,
        },
        optional={"prio": _json, "reference": _json, "extra": _json},
    ),
)
_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def http(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[httpx.Client]:
    service = start_service(**delivery_env(pki, [gateway]))
    with internal_client(service.base_url) as client:
        yield client
    assert "unhandled error" not in service.logs()


@_SETTINGS
@given(
    body=_bodies,
    key=st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=70),
)
def test_post_notifications_never_5xx(http: httpx.Client, body: Any, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    if key is not None and key.strip() == key:  # httpx refuses to send surrounding spaces
        headers["Idempotency-Key"] = key
    response = http.post(RS + "/notifications", json=body, headers=headers)
    assert response.status_code < 500 or response.status_code == 503, response.text
    check_documented(response)


@_SETTINGS
@given(
    body=st.binary(max_size=200) | _json.map(lambda value: json.dumps(value).encode()),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
    ),
)
def test_raw_bodies_never_5xx(http: httpx.Client, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = http.post(RS + "/notifications", content=body, headers=headers)
    assert response.status_code < 500, response.text
    check_documented(response)


@_SETTINGS
@given(
    user=st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=40),
    params=st.dictionaries(st.sampled_from(["id_type", "include_inactive"]), _text),
)
def test_get_channels_never_5xx(http: httpx.Client, user: str, params: dict[str, str]) -> None:
    response = http.get(f"{RS}/users/{user}/channels", params=params)
    assert response.status_code < 500, response.text
    check_documented(response)
