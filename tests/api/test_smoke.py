from conftest import Service, new_user, registration


def test_register_then_list(service: Service) -> None:
    user = new_user()
    with service.client(user) as http:
        body = registration()
        assert http.post("/push/v1/pushers/set", json=body).json() == {}
        pushers = http.get("/pushers/v1").json()["pushers"]
    assert [p["pushkey"] for p in pushers] == [body["pushkey"]]
