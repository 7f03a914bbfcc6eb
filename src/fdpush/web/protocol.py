"""HTTP/1.1 with bounded request heads: size and number of header fields.

uvicorn's httptools parser (what ``uvicorn[standard]`` uses) accepts a request head of any size
and any number of fields: an 8 MB header line is read, copied and kept. Here the head (request
line and fields) is counted as it arrives, and a head over ``max_bytes`` or with more than
``max_fields`` fields is answered ``431 Request Header Fields Too Large`` and the connection
closed, before the application sees anything — in ZETA's error shape when the request line
names the RS API. Without httptools, uvicorn's h11 parser bounds the head's size itself (it
answers 400, in plain text) and the field count follows from the size.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fdpush.web.zeta_errors import is_rs_path

__all__ = ["http_protocol"]

log = logging.getLogger(__name__)

_HEAD_END = re.compile(rb"\n\r?\n")  # the empty line after the fields (bare LF tolerated)
_START_BYTES = 128  # of the request line, kept to tell which API the refused request was for


def _refusal(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_REFUSAL = _refusal(b'{"errcode":"M_TOO_LARGE","error":"Request header fields too large"}')
_RS_REFUSAL = _refusal(
    b'{"errorCode":"REQUEST_HEADER_FIELDS_TOO_LARGE",'
    b'"errorDetail":"Request header fields too large"}'
)


def _refusal_for(request_line: bytes) -> bytes:
    """ZETA's shape for the RS API (named by the start of the request line), else Matrix's."""
    parts = request_line.split(b" ", 2)
    target = parts[1] if len(parts) > 1 else b""
    return _RS_REFUSAL if is_rs_path(target.split(b"?", 1)[0].decode("latin-1")) else _REFUSAL


class _HeadTooLarge(Exception):
    pass


def http_protocol(max_bytes: int, max_fields: int) -> tuple[Any, dict[str, Any]]:
    """``(http, extra uvicorn.Config arguments)`` that bound request heads."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11 bounds the head's size
        return "h11", {"h11_max_incomplete_event_size": max_bytes}

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = True
        _head_bytes = 0
        _fields = 0
        _carry = b""
        _start = b""
        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                if len(self._start) < _START_BYTES:
                    self._start = (self._start + data)[:_START_BYTES]
                scanned = self._carry + data
                end = _HEAD_END.search(scanned)
                if end is None:
                    self._head_bytes += len(data)
                    self._carry = scanned[-2:]
                else:
                    self._head_bytes += max(0, end.end() - len(self._carry))
                    self._in_head = False
                    self._carry = b""
                if self._head_bytes > max_bytes:
                    self._refuse("size")
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._fields = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._fields += 1
            if self._fields > max_fields:
                # Raised into the parser, which stops (and would answer 400: see below).
                self._refuse("fields")
                raise _HeadTooLarge
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            # The parser's word, not only the scan: a read that holds the end of one request's
            # body and the whole head of the next is scanned while still in the body, and the
            # next one's body must not then be counted as its head.
            self._in_head, self._carry = False, b""
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes, self._carry, self._start = True, 0, b"", b""

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # after a refusal the parser's own complaint is moot
                super().send_400_response(msg)

        def _refuse(self, what: str) -> None:
            self._refused = True
            log.warning(
                "refused a request head over the limit (%s: %d bytes, %d fields at most)",
                what,
                max_bytes,
                max_fields,
            )
            transport: asyncio.Transport = self.transport
            transport.write(_refusal_for(self._start.lstrip(b"\r\n")))
            transport.close()

    return BoundedHttpToolsProtocol, {}
