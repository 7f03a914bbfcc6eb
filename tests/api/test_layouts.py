"""Both published layouts are answered by the same handlers, under an optional base path."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Service, new_user, registration


def test_base_path_prefixes_both_layouts(start_service: Callable[..., Service]) -> None:
    service = start_service(FDPUSH_BASE_PATH="/client/v1")
    user = new_user()
    with service.client(user) as http:
        body = registration()
        assert http.post("/client/v1/push/v1/pushers/set", json=body).json() == {}
        seed = http.get("/client/v1/pushers/v1").json()
        current = http.get("/client/v1/push/v1/pushers").json()
        assert seed == current
        assert [p["pushkey"] for p in seed["pushers"]] == [body["pushkey"]]
        # Without the prefix there is nothing.
        unprefixed = http.get("/pushers/v1")
        assert unprefixed.status_code == 404
        assert unprefixed.json()["errcode"] == "M_UNRECOGNIZED"
    # Operations endpoints stay at the root.
    with service.client() as http:
        assert http.get("/health/live").json() == {"status": "ok"}


def test_a_pusher_set_in_one_layout_is_seen_in_the_other(service: Service) -> None:
    user = new_user()
    body = registration(pushkey="a/b+c=")
    with service.client(user) as http:
        assert http.post("/pushers/v1/set", json=body).status_code == 200
        assert http.get("/push/v1/pushers").json() == http.get("/pushers/v1").json()
        change = {"channels": [{"id": "erp.communication.new", "status": "enabled"}]}
        assert http.post("/push/v1/channels/a%2Fb%2Bc%3D", json=change).json() == {}
        seed_view = http.get("/channels/v1/a%2Fb%2Bc%3D").json()
        assert {"id": "erp.communication.new", "status": "enabled"} in seed_view["channels"]
        delete = {"kind": None, "app_id": body["app_id"], "pushkey": body["pushkey"]}
        assert http.post("/push/v1/pushers/set", json=delete).json() == {}
        assert http.get("/pushers/v1").json() == {"pushers": []}
