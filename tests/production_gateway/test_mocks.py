"""The mock providers themselves check what Apple and Google check (a direct HTTP/2 client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from fdpush.gateway import TestPki
from fdpush.testing import ApnsKey, MockApns, MockFcm, make_apns_key
from gateway.helpers import ENCRYPTED, encrypted_item

from .conftest import APNS_APP, APNS_TOPIC, KEY_ID, TEAM_ID, StartGateway, client_for

PAYLOAD = orjson.dumps({"aps": {"alert": {"title": "x"}, "mutable-content": 1}})


@pytest.fixture
def h2(pki: TestPki) -> Iterator[httpx.Client]:
    with httpx.Client(
        http1=False, http2=True, verify=pki.client_ssl_context(with_client_cert=False)
    ) as client:
        yield client


def provider_token(key: ApnsKey, *, iat: float | None = None, kid: str | None = None) -> str:
    claims = {"iss": key.team_id, "iat": int(iat if iat is not None else time.time())}
    return jwt.encode(
        claims, key.path.read_bytes(), algorithm="ES256", headers={"kid": kid or key.key_id}
    )


def apns_headers(key: ApnsKey, **changes: Any) -> dict[str, str]:
    headers = {
        "authorization": f"bearer {provider_token(key)}",
        "apns-topic": APNS_TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"apns-topic": None}, 400, "MissingTopic"),
        ({"apns-topic": "de.someone.else"}, 400, "TopicDisallowed"),
        ({"apns-push-type": None}, 400, "InvalidPushType"),
        ({"apns-priority": "7"}, 400, "BadPriority"),
        ({"authorization": None}, 403, "MissingProviderToken"),
        ({"authorization": "bearer not-a-jwt"}, 403, "InvalidProviderToken"),
    ],
)
def test_mock_apns_checks_headers_and_tokens(
    h2: httpx.Client,
    apns: MockApns,
    keys: dict[str, ApnsKey],
    changes: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    response = h2.post(
        f"{apns.url}/3/device/abc", content=PAYLOAD, headers=apns_headers(keys[KEY_ID], **changes)
    )
    assert response.http_version == "HTTP/2"
    assert (response.status_code, response.json()) == (status, {"reason": reason})


def test_mock_apns_refuses_old_foreign_and_oversized(
    h2: httpx.Client, apns: MockApns, keys: dict[str, ApnsKey], tmp_path: Path
) -> None:
    key = keys[KEY_ID]
    url = f"{apns.url}/3/device/abc"
    old = {"authorization": f"bearer {provider_token(key, iat=time.time() - 3700)}"}
    response = h2.post(url, content=PAYLOAD, headers=apns_headers(key, **old))
    assert response.json() == {"reason": "ExpiredProviderToken"}
    stranger = make_apns_key(tmp_path, team_id=TEAM_ID, key_id=KEY_ID)  # same kid, other key
    forged = {"authorization": f"bearer {provider_token(stranger)}"}
    response = h2.post(url, content=PAYLOAD, headers=apns_headers(key, **forged))
    assert response.json() == {"reason": "InvalidProviderToken"}
    big = orjson.dumps({"aps": {}, "pad": "x" * 4100})
    headers = apns_headers(key)  # one token per connection: a new one at once would be 429
    response = h2.post(url, content=big, headers=headers)
    assert (response.status_code, response.json()) == (413, {"reason": "PayloadTooLarge"})
    response = h2.post(url, content=PAYLOAD, headers=headers)
    assert response.status_code == 200
    assert response.headers["apns-id"]
    response = h2.post(url, content=PAYLOAD, headers=apns_headers(key))
    assert response.json() == {"reason": "TooManyProviderTokenUpdates"}


def test_mock_apns_speaks_http2_only(apns: MockApns, pki: TestPki) -> None:
    context = pki.client_ssl_context(with_client_cert=False)
    with httpx.Client(verify=context) as http1, pytest.raises(httpx.HTTPError):
        http1.post(f"{apns.url}/3/device/abc", content=PAYLOAD)


def test_the_gateway_keeps_to_the_providers_stream_limit(
    pki: TestPki, keys: dict[str, ApnsKey], start_gateway: StartGateway
) -> None:
    with MockApns(pki, max_concurrent_streams=3) as apns:
        apns.add_key(keys[KEY_ID], topics=[APNS_TOPIC])
        apns.latency = 0.05
        gateway = start_gateway(apns={"url": apns.url, "ca_file": pki.ca_cert})
        with client_for(gateway, pki) as http:
            items = [encrypted_item(app_id=APNS_APP) for _ in range(30)]
            body = http.post(ENCRYPTED, json={"notifications": items}).json()
        assert body["summary"]["successful"] == 30
        assert apns.server.max_streams_seen == 3
        assert apns.server.connections_opened == 1  # one long-lived connection, no churn


def test_mock_fcm_checks_tokens_projects_and_messages(
    h2: httpx.Client, fcm: MockFcm, tmp_path: Path
) -> None:
    account_path = fcm.add_service_account(tmp_path, "proj-a")
    account = orjson.loads(account_path.read_bytes())
    now = int(time.time())
    claims = {
        "iss": account["client_email"],
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": account["token_uri"],
        "iat": now,
        "exp": now + 3600,
    }
    assertion = jwt.encode(claims, account["private_key"], algorithm="RS256")
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    wrong_aud = jwt.encode({**claims, "aud": "https://elsewhere"}, account["private_key"], "RS256")
    refused = h2.post(fcm.token_uri, data={"grant_type": grant, "assertion": wrong_aud})
    assert refused.status_code == 400
    token = h2.post(fcm.token_uri, data={"grant_type": grant, "assertion": assertion}).json()
    bearer = {"authorization": f"Bearer {token['access_token']}"}
    send = f"{fcm.url}/v1/projects/proj-a/messages:send"
    message = {"message": {"token": "t", "data": {"a": "b"}, "android": {"priority": "HIGH"}}}

    def error(response: httpx.Response) -> tuple[int, str]:
        body = response.json()["error"]
        codes = [d["errorCode"] for d in body.get("details", [])]
        return response.status_code, (codes or [body["status"]])[0]

    assert error(h2.post(send, json=message)) == (401, "UNAUTHENTICATED")
    other = f"{fcm.url}/v1/projects/proj-b/messages:send"
    assert error(h2.post(other, json=message, headers=bearer)) == (403, "PERMISSION_DENIED")
    numbers = {"message": {"token": "t", "data": {"a": 1}}}
    assert error(h2.post(send, json=numbers, headers=bearer)) == (400, "INVALID_ARGUMENT")
    fcm.fail_next(1, "QUOTA_EXCEEDED", retry_after=60)
    quota = h2.post(send, json=message, headers=bearer)
    assert error(quota) == (429, "QUOTA_EXCEEDED")
    assert quota.headers["retry-after"] == "60"
    accepted = h2.post(send, json=message, headers=bearer)
    assert accepted.json()["name"].startswith("projects/proj-a/messages/")


def test_a_large_record_comes_back_whole(
    h2: httpx.Client, apns: MockApns, keys: dict[str, ApnsKey]
) -> None:
    # Over the 16 KB frame and the 64 KB flow-control window: sent in frames as the client opens it.
    headers = apns_headers(keys[KEY_ID])
    payload = orjson.dumps({"aps": {}, "ciphertext": "x" * 1404})
    for i in range(80):
        assert h2.post(f"{apns.url}/3/device/t{i}", content=payload, headers=headers).is_success
    received = h2.get(f"{apns.url}/_mock/received").json()["received"]
    assert [r["token"] for r in received] == [f"t{i}" for i in range(80)]
