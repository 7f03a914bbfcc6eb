"""``fdpush serve --workers N``: several API processes on one port, one ``/metrics`` for all.

Over real HTTP: requests on fresh connections are spread over the processes by the kernel; each
process reports its share in ``fdpush_http_process_requests{pid=...}``, and one scrape of any
process answers for all of them. With SQLite more than one process is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import DEFAULT_ENV, Service, dev_token, new_user, registration

DEADLINE_S = 30.0
_PROCESS_SERIES = re.compile(r'^fdpush_http_process_requests\{pid="(\d+)"\} ([0-9.e+]+)$', re.M)


def _metrics(service: Service) -> str:
    return httpx.get(service.base_url + "/metrics", timeout=10).text


def _requests_by_process(service: Service) -> dict[int, float]:
    return {int(pid): float(n) for pid, n in _PROCESS_SERIES.findall(_metrics(service))}


def _counted(metrics: str, route: str, method: str, status: str) -> float:
    pattern = (
        r"^fdpush_http_requests_total\{"
        + ",".join(
            f'{k}="{re.escape(v)}"'
            for k, v in sorted({"method": method, "route": route, "status": status}.items())
        )
        + r"\} ([0-9.e+]+)$"
    )
    match = re.search(pattern, metrics, re.M)
    return float(match.group(1)) if match else 0.0


def _parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_two_api_processes_share_one_port_and_one_metrics(
    backend: str, start_service: Callable[..., Service]
) -> None:
    if backend == "sqlite":
        pytest.skip("several API processes need PostgreSQL (SQLite is refused, tested below)")
    service = start_service(FDPUSH_WORKERS="2")
    user = new_user()
    body = registration()
    pushkey = body["pushkey"]
    with service.client(user) as client:
        assert client.post("/push/v1/pushers/set", json=body).status_code == 200
    path = "/push/v1/channels/" + urllib.parse.quote(pushkey, safe="")
    headers = {"Authorization": f"Bearer {dev_token(user)}"}

    def one_request(_: int) -> int:
        # A fresh connection each time: the kernel hands it to whichever process accepts.
        response = httpx.get(service.base_url + path, headers=headers, timeout=10)
        return response.status_code

    sent = 0
    deadline = time.monotonic() + DEADLINE_S
    with ThreadPoolExecutor(8) as pool:
        while True:
            statuses = list(pool.map(one_request, range(40)))
            assert statuses == [200] * 40
            sent += 40
            by_process = _requests_by_process(service)
            if len([n for n in by_process.values() if n > 0]) >= 2:
                break
            assert time.monotonic() < deadline, f"one process answered everything: {by_process}"

    # Two processes, both children of the one `fdpush serve`, both answered requests.
    assert len(by_process) == 2
    if sys.platform == "linux":
        assert {_parent_of(pid) for pid in by_process} == {service.process.pid}
    # One scrape covers both: every request sent is counted, whichever process answered it.
    metrics = _metrics(service)
    route = "/push/v1/channels/{pushkey}"
    assert _counted(metrics, route, "GET", "200") == sent
    assert _counted(metrics, "/push/v1/pushers/set", "POST", "200") == 1


def test_several_processes_on_sqlite_are_refused(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    env = {
        **clean,
        **DEFAULT_ENV,
        "FDPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'fdpush.db'}",
        "FDPUSH_MASTER_KEY_FILE": str(tmp_path / "master.key"),
        "FDPUSH_PORT": "0",
    }
    for args, extra in ((["--workers", "2"], {}), ([], {"FDPUSH_WORKERS": "3"})):
        done = subprocess.run(
            [sys.executable, "-m", "fdpush", "serve", *args],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0
        assert "needs PostgreSQL" in done.stderr
        assert "FDPUSH_WORKERS" in done.stderr
        assert not (tmp_path / "fdpush.db").exists()  # refused before touching anything
