"""Request heads are bounded (size and number of fields: 431), and a path is routed as sent: a
``%`` in a path's literal part never reaches a route (``/%69nternal/…`` is not the internal
API), while percent-encoded pushkeys keep working. Over raw sockets: HTTP clients would repair
or refuse what is sent here."""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Callable
from urllib.parse import quote

import pytest

from conftest import Service, dev_token, new_user, registration

MAX_HEADER_BYTES = 8192  # the service under test; the default is 32 KiB
MAX_FIELDS = 20


@pytest.fixture(scope="module")
def bounded(start_service: Callable[..., Service]) -> Service:
    return start_service(
        FDPUSH_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        FDPUSH_MAX_HEADER_FIELDS=str(MAX_FIELDS),
        FDPUSH_INTERNAL_API_KEY="internal-key-0123456789abcdef0123",
    )


def exchange(service: Service, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes or answers one response."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while _responses(received) < 1:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _responses(received: bytes) -> int:
    """How many whole responses ``received`` holds (each with its Content-Length of body)."""
    count = 0
    while b"\r\n\r\n" in received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            break
        count += 1
        received = rest[length:]
    return count


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def head(*fields: bytes, target: bytes = b"/health/live") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(fields)


def test_a_head_within_the_bounds_is_served(bounded: Service) -> None:
    almost = MAX_HEADER_BYTES - 500  # with the rest of the head: just under the bound
    fields = [b"X-Big: " + b"a" * almost + b"\r\n"] + [
        f"X-F{k}: v\r\n".encode()
        for k in range(MAX_FIELDS - 3)  # with Host, X-Big, Connection: the bound
    ]
    response = exchange(bounded, head(*fields) + b"Connection: close\r\n\r\n")
    assert status_of(response) == 200, response[:200]


def test_a_head_over_the_size_is_refused_before_it_ends(bounded: Service) -> None:
    """431 as soon as the head passes the bound: the rest is never waited for."""
    request = head(b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 100))  # no end of head sent
    response = exchange(bounded, request)
    assert status_of(response) == 431, response[:200]
    assert json.loads(response.partition(b"\r\n\r\n")[2])["errcode"] == "M_TOO_LARGE"


def test_a_body_after_a_head_read_with_the_previous_request_is_not_counted_as_head(
    bounded: Service,
) -> None:
    """Keep-alive: the end of one request and the whole head of the next arrive in one read;
    the next body, longer than the head bound, is a body (it was once counted as head: 431).

    The connection stays open until both answers are read: a server that answers before it has
    read a body and then closes resets the connection, which may take the answer with it."""
    first = b"POST /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n0123456789"
    size = MAX_HEADER_BYTES * 3
    second = (
        b"POST /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: " + str(size).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", bounded.port), timeout=10) as sock:
        sock.sendall(first + second)
        received = b""
        while _responses(received) < 1:  # the first answer: the server has read both heads,
            received += sock.recv(65536)  # in one read
        sock.sendall(b"a" * size)
        while _responses(received) < 2:  # a 431 would close the connection instead
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]
    assert len(statuses) == 2, received[:400]
    assert 431 not in statuses, received[:400]


def test_an_8_mb_header_line_is_cut_off(bounded: Service) -> None:
    """The server closes the connection long before 8 MB are sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", bounded.port), timeout=10) as sock:
        sock.sendall(head(b"X-Big: "))
        chunk = b"a" * 65536
        with pytest.raises(OSError):  # reset or broken pipe: the server has closed
            while sent < 8 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
    assert sent < 8 * 1024 * 1024


def test_too_many_fields_are_refused(bounded: Service) -> None:
    # Host + Connection + these: one over the bound.
    fields = [f"X-F{k}: v\r\n".encode() for k in range(MAX_FIELDS - 1)]
    response = exchange(bounded, head(*fields) + b"Connection: close\r\n\r\n")
    assert status_of(response) == 431, response[:200]
    exact = head(*fields[:-1]) + b"Connection: close\r\n\r\n"
    assert status_of(exchange(bounded, exact)) == 200


def raw(service: Service, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.request(method, target, body=b"{}" if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


INTERNAL = {"Authorization": "Bearer internal-key-0123456789abcdef0123"}


@pytest.mark.parametrize(
    "target",
    [
        "/%69nternal/v1/events",
        "/%69NTERNAL/v1/events",
        "/internal%2Fv1/events",
        "/internal/v1/%65vents",
        "/internal/v1%2fevents",
    ],
)
def test_an_encoded_literal_path_does_not_reach_the_internal_api(
    bounded: Service, target: str
) -> None:
    plain_status, _ = raw(bounded, "POST", "/internal/v1/events", INTERNAL)
    assert plain_status == 400  # reached: the (empty) event is refused by the API itself
    status, body = raw(bounded, "POST", target, INTERNAL)
    assert status == 404, body
    assert body["errcode"] == "M_UNRECOGNIZED"


def test_an_encoded_metrics_path_is_unknown(bounded: Service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", bounded.port, timeout=30)
    try:
        conn.request("GET", "/%6detrics")
        response = conn.getresponse()
        assert response.status == 404
        assert json.loads(response.read())["errcode"] == "M_UNRECOGNIZED"
    finally:
        conn.close()


def test_encoded_pushkeys_in_paths_keep_working(bounded: Service) -> None:
    user = new_user()
    pushkey = "pk/~with.all_kinds-of+chars="
    with bounded.client(user) as http_client:
        assert (
            http_client.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
        )
    token = {"Authorization": f"Bearer {dev_token(user)}"}
    every_byte = "".join(f"%{b:02X}" for b in pushkey.encode())
    for encoded in (quote(pushkey, safe=""), every_byte):
        for prefix in ("/push/v1/channels/", "/channels/v1/"):
            status, body = raw(bounded, "GET", prefix + encoded, token)
            assert status == 200, (prefix + encoded, body)
            assert "channels" in body
