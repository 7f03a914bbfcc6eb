"""The benchmarks still check what they measure: each runs once, small, and must find every
notification delivered exactly once and every answer as expected (their exit status). No
figure is asserted: speed is read from their tables, never from a test."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ON_CI

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=240, check=False
    )


def _delivery(backend: str, *args: str) -> str:
    """A small run of the delivery benchmark, which must find every notification delivered;
    its output."""
    result = _run(
        str(BENCH / "bench_delivery.py"),
        *("--backend", backend, "--seal-iterations", "1000", "--baseline-concurrency", "4"),
        *args,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every notification acknowledged" in result.stdout
    return result.stdout


def test_the_delivery_benchmark_checks_every_notification(backend: str) -> None:
    """Each of two rounds checked on its own: the second round's events reach the same devices
    again, and the first round's notifications must not count for it."""
    output = _delivery(
        backend, "--devices", "60", "--devices-per-user", "2", "--idle-events", "3", "--rounds", "2"
    )
    assert re.search(rf"{backend}, 2 rounds alternated: fdpush [\d,]+ · [\d,]+ notif/s", output)
    assert f"{backend}, round 2: all 30 events accepted" in output


def test_the_delivery_benchmark_runs_separate_worker_processes(backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("separate worker processes share PostgreSQL; SQLite is one process's")
    output = _delivery(
        backend, "--devices", "40", "--worker-processes", "1", "--idle-events", "0", "--timeline"
    )
    assert re.search(r"CPU, the worker processes used \d+%, the API \d+%", output)
    assert re.search(
        r"CPU per notification: fdpush \d+ us, its worker processes \d+ us, database \d+ us, "
        r"gateway \d+ us, load \d+ us, machine \d+ us",
        output,
    )
    # The timeline: a row per 100 ms of the measured phase, each process's share of a core.
    after = output.split("(--timeline):\n", 1)[1].splitlines()
    header, _rule, *rows = itertools.takewhile(lambda line: line.startswith("    "), after)
    assert header.split() == ["s", "API", "worker", "PostgreSQL", "gateway", "load", "machine"]
    assert rows and all(re.fullmatch(r"\s*[\d.]+(\s+(\d+%|-)){6}", row) for row in rows)


def test_the_api_benchmark_checks_every_answer(backend: str) -> None:
    """On PostgreSQL with the floor app too, asked for what is stored."""
    if shutil.which("wrk") is None:
        if ON_CI:
            pytest.fail("CI must run the API benchmark, but wrk is not installed")
        pytest.skip("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    result = _run(
        str(BENCH / "bench_api.py"),
        *("--backend", backend, "--quick", "--duration", "1", "--users", "8", "--warmup", "40"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every request answered 200 with the expected body" in result.stdout


def test_the_sender_http_benchmark_checks_every_verdict() -> None:
    result = _run(str(BENCH / "bench_sender_http.py"), "--requests", "4", "--warmup", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fdpush" in result.stdout and "httpx" in result.stdout


def test_the_wire_benchmark_runs_the_paths_it_compares() -> None:
    """It first checks that compose and the floor build the same notifications, and that the
    sender and the floor read the same verdicts from an answer."""
    result = _run(str(BENCH / "bench_wire.py"), "--quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "compose (keys opened, payload sealed)" in result.stdout


def test_the_prune_benchmark_checks_what_is_left() -> None:
    result = _run(
        str(BENCH / "bench_prune.py"),
        *("--events", "300", "--devices", "4", "--sent", "7000", "--keep", "50"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: the old rows are gone, the sent payloads forgotten, the pending ones kept" in (
        result.stdout
    )
    row = result.stdout.splitlines()[-2].split()
    assert row[:3] == ["300", "1,200", "7,000"], row


def test_the_backlog_benchmark_checks_every_notification(backend: str) -> None:
    result = _run(
        str(BENCH / "bench_backlog.py"),
        *("--backend", backend, "--devices", "20", "--events-per-device", "10"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].split()[-2:] == ["0", "0"]  # none lost, none repeated


def test_the_gateway_benchmark_checks_every_answer(tmp_path: Path) -> None:
    result = _run(
        str(BENCH / "bench_gateway.py"),
        *("--batches", "4", "--warmup", "1", "--rounds", "1", "--json", str(tmp_path / "g.json")),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "production gateway" in result.stdout


def test_the_queue_benchmark_checks_every_notification_settled() -> None:
    result = _run(str(BENCH / "bench_queue.py"), "--calls", "3", "--rounds", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every notification queued and settled" in result.stdout
    assert "settle, three endings" in result.stdout
