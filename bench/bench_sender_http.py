"""What one gateway request costs the sender's CPU: fdpush's gateway client against httpx.

What it measures
    Batches of 100 encrypted notifications (the spec's ``notifyEncrypted/batch`` body, about
    48 KB) posted to the development gateway (``fdpush gateway``, its own process, mutual TLS
    with a throwaway PKI), ``--in-flight`` requests at a time, by:

    - ``fdpush``: :class:`fdpush.delivery.gateway.GatewayClient`, as the delivery worker sends
      (aiohttp; answers read and matched to verdicts);
    - ``httpx``: an ``httpx.AsyncClient`` with the same TLS context, posting the same bodies and
      matching the answers to verdicts with the same function (what the worker used before).

    The figure is this process's CPU time (user + system) per request, TLS included: what the
    sender spends, whatever the gateway does. Each client first sends ``--warmup`` requests
    (connections made, nothing measured).

Usage
    .venv/bin/python bench/bench_sender_http.py                # 300 requests per client
    .venv/bin/python bench/bench_sender_http.py --requests 100 --json sender.json

Exit status: 0 when every request of both clients got a 200 with a success for each item.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

from fdpush.delivery.gateway import (
    ENCRYPTED_BATCH,
    EncodedItem,
    GatewayClient,
    batch_body,
    batch_verdicts,
)
from fdpush.gateway import GatewayProcess, TestPki, make_test_pki

ITEMS_PER_REQUEST = 100


def _items(request: int) -> list[EncodedItem]:
    return [
        EncodedItem.of(
            {
                "id": f"r{request}-{i}",
                "notification": {
                    "ciphertext": base64.b64encode(os.urandom(1052)).decode(),
                    "time_message_encrypted": "2026-11",
                    "key_identifier": base64.b64encode(os.urandom(16)).decode(),
                    "prio": "high",
                    "device": {
                        "app_id": "de.gematik.erezept.apns",
                        "pushkey": base64.b64encode(os.urandom(32)).decode(),
                        "pushkey_ts": 1750000000,
                    },
                },
            }
        )
        for i in range(ITEMS_PER_REQUEST)
    ]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(
    send: Callable[[list[EncodedItem]], Awaitable[bool]],
    batches: list[list[EncodedItem]],
    in_flight: int,
) -> tuple[float, float, int]:
    """CPU seconds and wall seconds for sending ``batches``; how many were all delivered."""
    queue = list(reversed(batches))
    good = 0

    async def worker() -> None:
        nonlocal good
        while queue:
            delivered = await send(queue.pop())
            good += delivered

    cpu, wall = _cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return _cpu_seconds() - cpu, time.perf_counter() - wall, good


_Sender = tuple[Callable[[list[EncodedItem]], Awaitable[bool]], Callable[[], Awaitable[None]]]


def _fdpush_sender(base: str, pki: TestPki, in_flight: int) -> _Sender:
    client = GatewayClient(
        ca_file=pki.ca_cert,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        max_connections_per_gateway=in_flight,
    )

    async def send(items: list[EncodedItem]) -> bool:
        outcome = await client.send(base, items)
        verdicts = outcome.results.values()
        return len(verdicts) == len(items) and all(v.outcome == "delivered" for v in verdicts)

    return send, client.aclose


def _httpx_sender(base: str, pki: TestPki, _in_flight: int) -> _Sender:
    client = httpx.AsyncClient(verify=pki.client_ssl_context(), timeout=10.0)
    headers = {"content-type": "application/json"}

    async def send(items: list[EncodedItem]) -> bool:
        async with client.stream(
            "POST", base + ENCRYPTED_BATCH, content=batch_body(items), headers=headers
        ) as response:
            body = await response.aread()
        if response.status_code != 200:
            return False
        verdicts = batch_verdicts(body, {item.id for item in items}) or []
        return len(verdicts) == len(items) and all(v.outcome == "delivered" for v in verdicts)

    return send, client.aclose


async def measure(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pki = make_test_pki(workdir / "pki")
    total = options.warmup + options.requests
    gateway = GatewayProcess(
        workdir / "gateway",
        pki=pki,
        args=["--log-level", "warning", "--inbox-total", str(2 * total * ITEMS_PER_REQUEST)],
    )
    figures: dict[str, Any] = {}
    try:
        base = gateway.push_url
        for name in ("fdpush", "httpx"):
            batches = [_items(n) for n in range(total)]
            send, close = (_fdpush_sender if name == "fdpush" else _httpx_sender)(
                base, pki, options.in_flight
            )
            try:
                await _run(send, batches[: options.warmup], options.in_flight)
                cpu, wall, good = await _run(send, batches[options.warmup :], options.in_flight)
            finally:
                await close()
            figures[name] = {
                "requests": options.requests,
                "all_delivered": good,
                "cpu_ms_per_request": round(1000 * cpu / options.requests, 3),
                "cpu_us_per_notification": round(
                    1e6 * cpu / (options.requests * ITEMS_PER_REQUEST), 2
                ),
                "requests_per_second": round(options.requests / wall, 1),
            }
    finally:
        gateway.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per client")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    parser.add_argument("--in-flight", type=int, default=4, help="requests at a time (4)")
    parser.add_argument("--json", dest="json_path", help="write the figures to this file")
    options = parser.parse_args(argv)
    if options.requests < 1 or options.warmup < 0 or options.in_flight < 1:
        parser.error("--requests and --in-flight at least 1, --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="fdpush-sender-http-") as tmp:
        figures = uvloop.run(measure(options, Path(tmp)))
    print(f"{'client':8}  {'requests':>8}  {'CPU ms/request':>14}  {'CPU us/notif':>12}  req/s")
    for name, f in figures.items():
        print(
            f"{name:8}  {f['requests']:>8}  {f['cpu_ms_per_request']:>14.3f}  "
            f"{f['cpu_us_per_notification']:>12.2f}  {f['requests_per_second']:.0f}"
        )
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(figures, indent=2) + "\n")
    failed = [name for name, f in figures.items() if f["all_delivered"] != f["requests"]]
    if failed:
        print(f"FAILED: not every request delivered: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
