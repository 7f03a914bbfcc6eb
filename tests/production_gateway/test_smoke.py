from __future__ import annotations

import httpx

from fdpush.testing import MockApns, MockFcm
from gateway.helpers import ENCRYPTED, encrypted_item, new_pushkey

from .conftest import APNS_APP, FCM_APP


def test_one_push_each(client: httpx.Client, apns: MockApns, fcm: MockFcm) -> None:
    a, f = new_pushkey(), new_pushkey()
    body = {
        "notifications": [
            encrypted_item("a", pushkey=a, app_id=APNS_APP),
            encrypted_item("f", pushkey=f, app_id=FCM_APP),
        ]
    }
    response = client.post(ENCRYPTED, json=body)
    print(response.json())
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["results"]] == ["success", "success"]
    assert len(apns.accepted_for(a)) == 1
    assert len(fcm.accepted_for(f)) == 1
