"""Benchmark of encrypted delivery: events in, until the Push Gateway has acknowledged everything.

What it measures
    End-to-end fan-out throughput of the *real* service on SQLite and on PostgreSQL: events go
    in through ``POST /internal/v1/events/batch`` and the clock stops when the development Push
    Gateway has accepted the last of their notifications — registration of the devices is
    setup and not timed. In the same run, for comparison:

    - **sealing alone**: ``fdpush.crypto.seal_notification`` (frame, AES-256-GCM, Base64) in
      this process, many times over: microseconds per seal, seals per second (one core);
    - **a naive sender** as the baseline: one HTTP request per notification to
      ``notifyEncrypted/batch`` with a batch of one (what the e-prescription service's push
      component does), from asyncio + httpx over the same mutual TLS, at a stated concurrency,
      posting the very notifications the service sent (taken from the gateway's records, so
      the bodies are identical). It does no database work and no sealing — a generous baseline.

How
    Per backend: a throwaway PKI (``fdpush.gateway.make_test_pki``), the development gateway as
    a separate ``fdpush gateway`` process over mutual TLS, and ``<python> -m fdpush serve
    --no-access-log`` (delivery worker in-process, dev auth, no rate limit, the gateway's CA
    and client certificate) on a fresh database: an SQLite file in a temporary directory, or a
    PostgreSQL database created on the local server and dropped afterwards. It registers the
    devices through the client API with real encryption blocks (a fresh ``iss`` each), then
    sends one event per user, ``--events-per-request`` to a request, from
    ``--event-concurrency`` aiohttp connections, and polls the gateway's ``/_dev/stats`` with a
    deadline until every notification was recorded. Then it checks every notification: each id
    at the gateway exactly once, every device exactly once, every ciphertext opened with the key the
    *app* derives from the iss this benchmark made (its own HKDF and AES-GCM, not fdpush's), the
    payload the one sent for that user, and every notification ``delivered`` in the database.

Figures
    notifications/s = notifications ÷ (last acknowledgement at the gateway - first event POST),
    the last acknowledgement being the newest ``received_at`` of the gateway's records. The
    ratios to the baseline and to the sealing-only rate. Event→gateway latency (p50 / p99) per
    notification: its ``received_at`` minus the moment its event's request was sent (the
    gateway records milliseconds). Peak memory (``VmHWM``) of the service and of the gateway
    process, and the CPU they used during the measured phase.

Rounds
    ``--rounds N`` measures fdpush and the naive sender N times each, alternately, on the same
    registered devices (each round's events reach every device again; each round is checked as
    above): a row per round, and per backend each rate, each ratio and their medians. On a
    shared machine runs of the same code differ by a fifth and more; alternated rounds put the
    two senders under the same conditions and the median says more than one run. The profile
    (``--profile``) and the idle phase belong to the first round.

Usage
    .venv/bin/python bench/bench_delivery.py                # both backends, 10,000 devices
    .venv/bin/python bench/bench_delivery.py --quick        # a 1,000-device smoke run
    .venv/bin/python bench/bench_delivery.py --backend sqlite --profile prof/
    .venv/bin/python bench/bench_delivery.py --backend postgresql --devices 20000 --rounds 5

Exit status: 0 every notification acknowledged exactly once and correct (or every backend was
skipped), 1 anything lost, duplicated, wrong or errored, 2 bad arguments, 3 the gateway or the
service did not start or the unmeasured setup failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bench_api import (
    DEFAULT_POSTGRES_URL,
    Call,
    ServiceError,
    _event_loop_factory,
    _free_port,
    announce,
    describe_databases,
    expect_empty_object,
    machine_busy_seconds,
    machine_info,
    parse_service_env,
    percentile,
    postgres_database,
    run_phase,
    text_table,
)
from fdpush import crypto
from fdpush.crypto import pushkey_index
from fdpush.domain.keys import current_period
from fdpush.gateway import GatewayProcess, TestPki, make_test_pki
from fdpush.gateway.runner import stop_process

DEV_SECRET = "bench-secret-0123456789abcdef0123456789"
INTERNAL_API_KEY = "bench-internal-" + uuid.uuid4().hex
APP_ID = "de.gematik.erezept.apns"  # the gateway renders an APNs message, as for a real iPhone
CHANNEL = "erp.task.activate"
OTHER_CHANNEL = "erp.communication.new"
SET_PATH = "/push/v1/pushers/set"
CHANNELS_PATH = "/push/v1/channels/"
EVENTS_PATH = "/internal/v1/events/batch"
ENCRYPTED_BATCH_PATH = "/push/v1/notifyEncrypted/batch"
STARTUP_DEADLINE_S = 30.0
REQUEST_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1  # how often the gateway's counters are read while waiting
ERROR_SAMPLES = 5
PAGE = 10_000  # the gateway's largest /_dev/notifications page

EXIT_OK, EXIT_ERRORS, EXIT_NO_SERVICE = 0, 1, 3  # argparse exits with 2 on bad arguments


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    backends: tuple[str, ...]
    devices: int
    devices_per_user: int
    events_per_request: int
    event_concurrency: int
    baseline_concurrency: int
    register_concurrency: int
    idle_events: int
    seal_iterations: int
    explicit_channels: bool
    time_limit: float
    postgres_url: str
    python: str
    json_path: Path | None
    profile_dir: Path | None
    logs_dir: Path | None
    service_env: tuple[tuple[str, str], ...]
    worker_processes: int = 0
    mixed_channels: bool = False
    rounds: int = 1
    postgres_locale: str | None = None
    timeline: bool = False

    @property
    def users(self) -> int:
        return self.devices // self.devices_per_user


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark end-to-end encrypted delivery of the real fdpush service "
        "(events in until the Push Gateway acknowledged every notification) on SQLite and "
        "PostgreSQL, against sealing alone and a naive one-request-per-notification sender.",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="which database(s) to measure (default: both)",
    )
    parser.add_argument(
        "--devices", type=int, help="devices, all subscribed (default 10000; quick 1000)"
    )
    parser.add_argument(
        "--devices-per-user",
        type=int,
        default=1,
        help="devices per user; one event per user goes to all of them (default 1)",
    )
    parser.add_argument(
        "--events-per-request",
        type=int,
        default=100,
        help="events per POST /internal/v1/events/batch (default 100, the service's limit)",
    )
    parser.add_argument(
        "--event-concurrency", type=int, default=4, help="event requests in flight (default 4)"
    )
    parser.add_argument(
        "--baseline-concurrency",
        type=int,
        default=32,
        help="requests in flight of the naive sender (default 32)",
    )
    parser.add_argument(
        "--mixed-channels",
        action="store_true",
        help="the channel's catalog default is not_set; a third of the devices enable it, a "
        "third disable it, a third never choose: only the first third gets notifications",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=0,
        help="0: the delivery worker runs inside `fdpush serve` (the default); N: serve without "
        "it plus `fdpush worker --processes N` on the same database",
    )
    parser.add_argument(
        "--register-concurrency",
        type=int,
        default=32,
        help="registration requests in flight (setup, default 32)",
    )
    parser.add_argument(
        "--idle-events",
        type=int,
        default=50,
        help="events sent one at a time to the idle service, for its event-to-gateway latency "
        "(default 50; 0 skips the phase)",
    )
    parser.add_argument(
        "--seal-iterations",
        type=int,
        help="seal_notification calls measured (default 200000; quick 20000)",
    )
    parser.add_argument(
        "--explicit-channels",
        action="store_true",
        help="the channel's catalog default is not_set and every device enables it through "
        "POST channels/{pushkey} (default: the catalog default is enabled)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds the measured phase may take before the rest counts as lost (default 300)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"an admin URL of the PostgreSQL server to create the database on "
        f"(default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--postgres-locale",
        metavar="LOCALE",
        help="create the PostgreSQL database with this locale instead of the server's default, "
        "as a German deployment's may be: a libc locale the server has (de_DE.UTF-8) or icu: "
        "and an ICU locale (icu:de-DE)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs `-m fdpush serve` (default: this one)",
    )
    parser.add_argument("--json", dest="json_path", type=Path, help="also write figures here")
    parser.add_argument(
        "--profile",
        dest="profile_dir",
        type=Path,
        help="sample the service and the gateway with py-spy during the measured phase; write "
        "the raw stacks to this directory and print the service's top functions",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="FDPUSH_X=VALUE",
        help="another setting for the service (and worker), e.g. "
        "FDPUSH_DELIVERY_CONCURRENCY_PER_GATEWAY=8 (repeatable)",
    )
    parser.add_argument(
        "--keep-logs",
        dest="logs_dir",
        type=Path,
        help="copy the service's (and worker's) log of each backend to this directory",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure fdpush and the naive sender this many times each, alternately, on the "
        "same devices, and report every round and the medians (default 1); runs on a shared "
        "machine differ by a fifth and more",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="sample every process's CPU each 100 ms of the first round's measured phase and "
        "print it over time: when the machine is full, and who is busy then",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run: 1000 devices, 20000 seals"
    )
    args = parser.parse_args(argv)

    devices = args.devices if args.devices is not None else (1000 if args.quick else 10_000)
    seals = (
        args.seal_iterations
        if args.seal_iterations is not None
        else (20_000 if args.quick else 200_000)
    )
    checks = (
        (1 <= devices <= 100_000, "--devices must be 1..100000"),
        (1 <= args.devices_per_user <= 100, "--devices-per-user must be 1..100"),
        (devices % args.devices_per_user == 0, "--devices must be a multiple of per-user"),
        (1 <= args.events_per_request <= 100, "--events-per-request must be 1..100"),
        (1 <= args.event_concurrency <= 256, "--event-concurrency must be 1..256"),
        (1 <= args.baseline_concurrency <= 1024, "--baseline-concurrency must be 1..1024"),
        (1 <= args.register_concurrency <= 1024, "--register-concurrency must be 1..1024"),
        (
            0 <= args.idle_events <= min(devices // max(args.devices_per_user, 1), 10_000),
            "--idle-events must be 0..users (and at most 10000)",
        ),
        (1_000 <= seals <= 10_000_000, "--seal-iterations must be 1000..10000000"),
        (args.time_limit > 0, "--time-limit must be positive"),
        (1 <= args.rounds <= 20, "--rounds must be 1..20"),
    )
    for ok, message in checks:
        if not ok:
            parser.error(message)
    service_env = parse_service_env(parser, args.service_env)
    return Options(
        backends=("sqlite", "postgresql") if args.backend == "both" else (args.backend,),
        devices=devices,
        devices_per_user=args.devices_per_user,
        events_per_request=args.events_per_request,
        event_concurrency=args.event_concurrency,
        baseline_concurrency=args.baseline_concurrency,
        register_concurrency=args.register_concurrency,
        idle_events=args.idle_events,
        seal_iterations=seals,
        explicit_channels=args.explicit_channels,
        time_limit=args.time_limit,
        postgres_url=args.postgres_url,
        python=args.python,
        json_path=args.json_path,
        profile_dir=args.profile_dir,
        logs_dir=args.logs_dir,
        service_env=service_env,
        worker_processes=args.worker_processes,
        mixed_channels=args.mixed_channels,
        rounds=args.rounds,
        postgres_locale=args.postgres_locale,
        timeline=args.timeline,
    )


# --- processes ---------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM) in MiB (Linux), else None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += process_tree(int(child))
    return found


def tree_cpu_seconds(pids: list[int]) -> float | None:
    """CPU seconds of these processes and their descendants."""
    total = [cpu_seconds(p) for root in pids for p in process_tree(root)]
    return None if not total or total[0] is None else sum(t for t in total if t is not None)


def tree_peak_rss_mb(pids: list[int]) -> float | None:
    peaks = [peak_rss_mb(p) for root in pids for p in process_tree(root)]
    known = [p for p in peaks if p is not None]
    return sum(known) if known else None


def database_cpu_seconds() -> float | None:
    """CPU seconds of every PostgreSQL server process on this machine (Linux)."""
    total = 0.0
    found = False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        used = cpu_seconds(int(proc.name))
        if used is not None:
            total += used
            found = True
    return total if found else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    """``fdpush serve`` in a subprocess, delivering to the benchmark's gateway over mutual TLS."""

    def __init__(
        self, options: Options, database_url: str, workdir: Path, gateway_url: str, pki: TestPki
    ) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "service.log"
        self.master_key = os.urandom(32)
        default = "not_set" if options.explicit_channels or options.mixed_channels else "enabled"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")},
            "FDPUSH_HOST": "127.0.0.1",
            "FDPUSH_PORT": str(self.port),
            "FDPUSH_DATABASE_URL": database_url,
            "FDPUSH_MASTER_KEY": base64.b64encode(self.master_key).decode(),
            "FDPUSH_AUTH_MODE": "dev",
            "FDPUSH_AUTH_DEV_SECRET": DEV_SECRET,
            "FDPUSH_RATE_LIMIT": "0",
            "FDPUSH_CHANNELS": f"{CHANNEL}={default},{OTHER_CHANNEL}=not_set",
            "FDPUSH_MAX_PUSHERS_PER_USER": str(max(20, options.devices_per_user)),
            "FDPUSH_INTERNAL_API_KEY": INTERNAL_API_KEY,
            "FDPUSH_GATEWAY_ALLOWLIST": urllib.parse.urlsplit(gateway_url).netloc,
            "FDPUSH_GATEWAY_CA_FILE": str(pki.ca_cert),
            "FDPUSH_GATEWAY_CLIENT_CERT": str(pki.client_cert),
            "FDPUSH_GATEWAY_CLIENT_KEY": str(pki.client_key),
            **dict(options.service_env),
        }
        self.command = [options.python, "-m", "fdpush", "serve", "--no-access-log"]
        self.worker: subprocess.Popen[bytes] | None = None
        if options.worker_processes:
            env["FDPUSH_SERVE_WORKER"] = "0"
            env["FDPUSH_WORKER_METRICS_PORT"] = str(_free_port())
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
            if options.worker_processes:
                worker = [options.python, "-m", "fdpush", "worker"]
                worker += ["--processes", str(options.worker_processes)]
                with (workdir / "worker.log").open("wb") as log:
                    self.worker = subprocess.Popen(
                        worker, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
                    )
                ready = f"http://127.0.0.1:{env['FDPUSH_WORKER_METRICS_PORT']}/health/ready"
                deadline = time.monotonic() + STARTUP_DEADLINE_S
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(ready, timeout=1.0).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.05)  # poll interval, not a wait for readiness
                else:
                    raise ServiceError("fdpush worker was not ready in time")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """The API process and, when separate, the worker supervisor (with its processes)."""
        return [self.process.pid] + ([self.worker.pid] if self.worker is not None else [])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"fdpush serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.base_url + "/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval, not a wait for readiness
        raise ServiceError(f"fdpush serve was not ready within {STARTUP_DEADLINE_S:.0f} s")

    def cpu_seconds(self) -> float | None:  # for bench_api.run_phase
        return tree_cpu_seconds(self.pids)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_problems(self, since: int) -> list[str]:
        """WARNING / ERROR lines logged after byte ``since`` (a clean phase has none)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]

    def stop(self) -> None:
        if self.worker is not None:
            stop_process(self.worker)
        stop_process(self.process)


class Gateway:
    """The development gateway as its own process (``fdpush gateway``), over mutual TLS."""

    def __init__(
        self, workdir: Path, pki: TestPki, notifications: int, *, per_device: int = 100
    ) -> None:
        keep = max(100_000, 2 * notifications)  # keep every record: the checks read them all
        try:
            self.running = GatewayProcess(
                workdir,
                pki=pki,
                args=[
                    "--log-level",
                    "warning",
                    "--inbox-total",
                    str(keep),
                    "--inbox-per-device",
                    str(per_device),
                ],
            )
        except RuntimeError as exc:
            raise ServiceError(f"the gateway did not start: {exc}") from None
        self.pki = pki

    @property
    def pid(self) -> int:
        return self.running.process.pid

    @property
    def push_url(self) -> str:
        return self.running.push_url

    def cpu_seconds(self) -> float | None:  # for bench_api.run_phase
        return cpu_seconds(self.pid)

    def async_client(self) -> httpx.AsyncClient:
        """One client with one keep-alive connection, trusting the CA, presenting the cert."""
        return httpx.AsyncClient(
            base_url=self.running.url,
            verify=self.pki.client_ssl_context(),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=REQUEST_TIMEOUT_S,
        )

    def records(self) -> list[dict[str, Any]]:
        """Every notification the gateway keeps, oldest first."""
        found: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self.running.notifications(since=since, limit=PAGE)
            found.extend(page["notifications"])
            if not page["notifications"]:
                return found
            since = page["next"]

    def stats(self) -> dict[str, Any]:
        return self.running.stats()

    def forget(self) -> None:
        """Empty the inbox and zero the counters (between the phases)."""
        self.running.clear()
        self.running.reset_stats()

    def stop(self) -> None:
        self.running.stop()


class Profiler:
    """``py-spy record`` attached to the service for the measured phase (raw stacks)."""

    def __init__(self, pid: int, output: Path, *, subprocesses: bool = False) -> None:
        py_spy = Path(sys.executable).with_name("py-spy")
        self.output = output
        output.parent.mkdir(parents=True, exist_ok=True)
        command = [str(py_spy), "record", "--format", "raw", "--rate", "200"]
        if subprocesses:
            command.append("--subprocesses")
        self.process = subprocess.Popen(
            [*command, "--pid", str(pid), "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> str:
        """Stop sampling and write the file; returns py-spy's complaints, if any."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode(errors="replace") if self.process.returncode else ""


def profile_summary(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions of a py-spy raw file: by own samples and by samples they appear in."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")[1:]]  # [0]: process / thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "own": [(name, n, round(100 * n / total, 1)) for name, n in own.most_common(top)],
        "inclusive": [
            (name, n, round(100 * n / total, 1)) for name, n in inclusive.most_common(top * 3)
        ],
    }


def _function(frame: str) -> str:
    """``func (path/file.py:123)`` → ``func (path/file.py)``: one name per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# --- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    user: str
    pushkey: str
    iss: bytes
    period: str  # time_iss_created
    key_identifier: str


def _token(user_id: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + 6 * 3600}, DEV_SECRET, "HS256")


def _pushkey() -> str:
    """A pushkey shaped like a real device token, with the characters that need URL encoding."""
    return base64.b64encode(os.urandom(30)).decode() + f"/+{uuid.uuid4().hex[:8]}="


class Workload:
    """Users, their devices (with the iss each registered), and the requests of each phase."""

    def __init__(self, options: Options) -> None:
        period = current_period()  # the service's month (Europe/Berlin): no ratchet needed
        self.users = [f"bench-{uuid.uuid4().hex[:16]}" for _ in range(options.users)]
        self.devices = [
            Device(user, _pushkey(), os.urandom(32), period, str(uuid.uuid4()))
            for user in self.users
            for _ in range(options.devices_per_user)
        ]
        self.by_pushkey = {d.pushkey: d for d in self.devices}
        # --mixed-channels: devices 0, 3, 6, … enable the channel, 1, 4, … disable it, the
        # rest never choose (not_set): only the first third is subscribed.
        self.mixed = options.mixed_channels
        self.subscribed = self.devices[::3] if self.mixed else self.devices
        self.by_pushkey_subscribed = {d.pushkey: d for d in self.subscribed}
        self.reach = Counter(d.user for d in self.subscribed)
        for user in self.users:
            self.reach.setdefault(user, 0)
        # What the e-prescription service sends (docs/peers.md), one prescription per user.
        self.payloads = {
            user: {
                "ChannelId": CHANNEL,
                "Identifier": f"160.{k // 1_000_000 % 1000:03d}.{k // 1000 % 1000:03d}."
                f"{k % 1000:03d}.000.{k % 100:02d}",
                "IdentifierType": "PrescriptionId",
            }
            for k, user in enumerate(self.users)
        }
        self.events_per_request = options.events_per_request

    def register(self, push_url: str) -> list[Call]:
        tokens = {user: _token(user) for user in self.users}
        calls = []
        for d in self.devices:
            body = {
                "kind": "http",
                "app_id": APP_ID,
                "pushkey": d.pushkey,
                "app_display_name": "E-Rezept",
                "device_display_name": "Bench Phone",
                "lang": "de",
                "data": {"url": push_url, "format": "event_id_only"},
                "append": False,
                "encryption": {
                    "method": crypto.METHOD,
                    "iss": d.iss.hex(),
                    "time_iss_created": d.period,
                    "key_identifier": d.key_identifier,
                },
            }
            headers = {
                "Authorization": f"Bearer {tokens[d.user]}",
                "Content-Type": "application/json",
            }
            calls.append(Call("POST", SET_PATH, headers, orjson.dumps(body)))
        return calls

    def enable_channel(self) -> list[Call]:
        tokens = {user: _token(user) for user in self.users}
        enable = orjson.dumps({"channels": [{"id": CHANNEL, "status": "enabled"}]})
        disable = orjson.dumps({"channels": [{"id": CHANNEL, "status": "disabled"}]})
        choices = [
            (d, enable if not self.mixed or n % 3 == 0 else disable)
            for n, d in enumerate(self.devices)
            if not self.mixed or n % 3 != 2
        ]
        return [
            Call(
                "POST",
                CHANNELS_PATH + urllib.parse.quote(d.pushkey, safe=""),
                {"Authorization": f"Bearer {tokens[d.user]}", "Content-Type": "application/json"},
                body,
            )
            for d, body in choices
        ]

    def event_batches(self) -> list[tuple[list[str], bytes]]:
        """One event per user, ``events_per_request`` to a request: (users, body) each."""
        batches = []
        for start in range(0, len(self.users), self.events_per_request):
            users = self.users[start : start + self.events_per_request]
            events = [
                {
                    "user_id": user,
                    "channel": CHANNEL,
                    "payload": self.payloads[user],
                    "prio": "high",
                    "identifier": self.payloads[user]["Identifier"],
                }
                for user in users
            ]
            batches.append((users, orjson.dumps({"events": events})))
        return batches


# --- the app's side of the crypto (independent of fdpush.crypto) -------------------------------


def _next_month(period: str) -> str:
    year, month = int(period[:4]), int(period[5:])
    return f"{year + 1:04d}-01" if month == 12 else f"{year:04d}-{month + 1:02d}"


def app_key(iss: bytes, iss_period: str, period: str) -> bytes:
    """The AES key of ``period`` as the app derives it: HKDF month by month from the iss."""
    secret, current = iss, iss_period
    for _ in range(240):
        okm = HKDF(hashes.SHA256(), 64, salt=None, info=current.encode()).derive(secret)
        if current == period:
            return okm[32:]
        secret, current = okm[:32], _next_month(current)
    raise ValueError(f"{period} is not within 20 years after {iss_period}")


def app_open(key: bytes, ciphertext: str) -> bytes:
    """Base64(IV ‖ AES-GCM ciphertext ‖ tag) → the payload inside the PNM1 frame."""
    raw = base64.b64decode(ciphertext, validate=True)
    framed = AESGCM(key).decrypt(raw[:12], raw[12:], None)
    if len(framed) != 1024 or framed[:4] != b"PNM1":
        raise ValueError("not a 1024-byte PNM1 frame")
    padding = int.from_bytes(framed[4:6], "big")
    return framed[6 + padding :]


# --- sealing alone -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealingFigures:
    iterations: int
    payload_bytes: int
    seconds: float
    microseconds_per_seal: float
    seals_per_second: float


def measure_sealing(iterations: int, payload: bytes) -> SealingFigures:
    """``crypto.seal_notification`` in this process, one core: µs per seal and seals/s."""
    key = os.urandom(32)
    seal = crypto.seal_notification
    for _ in range(min(iterations // 10, 10_000)):  # warm-up
        seal(key, payload)
    started = time.perf_counter()
    for _ in range(iterations):
        seal(key, payload)
    seconds = time.perf_counter() - started
    return SealingFigures(
        iterations=iterations,
        payload_bytes=len(payload),
        seconds=round(seconds, 3),
        microseconds_per_seal=round(seconds / iterations * 1e6, 2),
        seals_per_second=round(iterations / seconds),
    )


# --- the measured phases -----------------------------------------------------------------------


@dataclass(slots=True)
class Problems:
    """Everything that went wrong in one backend's run; any of it fails the run."""

    lost: int = 0
    duplicated: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def note(self, kind: str, count: int, sample: str) -> None:
        if count <= 0:
            return
        setattr(self, kind, getattr(self, kind) + count)
        if len(self.samples) < 3 * ERROR_SAMPLES:
            self.samples.append(sample)

    @property
    def total(self) -> int:
        return self.lost + self.duplicated + self.errors


@dataclass(slots=True)
class EventsSent:
    started: float  # time.time() just before the first event request
    last_accepted: float = math.nan  # time.time() when the last 202 came back
    sent_at: dict[str, float] = field(default_factory=dict)  # user → when its request went out


async def send_events(
    base_url: str,
    concurrency: int,
    batches: list[tuple[list[str], bytes]],
    reach_of: dict[str, int],
    problems: Problems,
) -> EventsSent:
    """POST the event batches from ``concurrency`` senders, one keep-alive connection each;
    check each 202 answer.

    aiohttp, not httpx: its parser is compiled, so the load costs the shared cores a third of
    what httpx's did (16 % of a core at 10,000 notifications/s).
    """
    headers = {"Authorization": f"Bearer {INTERNAL_API_KEY}", "Content-Type": "application/json"}
    queue = iter(batches)
    sent = EventsSent(started=time.time())
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def worker() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as client:
            for users, body in queue:
                sent_at = time.time()
                for user in users:
                    sent.sent_at[user] = sent_at
                try:
                    async with client.post(EVENTS_PATH, headers=headers, data=body) as response:
                        status, answer = response.status, await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    problems.note("errors", len(users), f"events: {type(exc).__name__}: {exc}")
                    continue
                if status != 202:
                    problems.note("errors", len(users), f"events: {status} {answer[:200]!r}")
                    continue
                results = orjson.loads(answer).get("results", [])
                reach = [r.get("notifications") for r in results]
                wanted = [reach_of[user] for user in users]
                if len(results) != len(users) or reach != wanted:
                    problems.note(
                        "errors",
                        len(users),
                        f"events: {len(results)} results for {len(users)} events, reaching "
                        f"{sorted(set(map(str, reach)))} devices, not {sorted(set(wanted))}",
                    )

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(batches)))))
    sent.last_accepted = time.time()
    return sent


async def wait_for_gateway(
    gateway: Gateway, expected: int, deadline: float
) -> tuple[float | None, int]:
    """Poll ``/_dev/stats`` until ``expected`` notifications were recorded or the deadline.

    Returns when it saw them all (time.time(), None at the deadline) and the last count seen.
    """
    recorded = 0
    async with gateway.async_client() as client:
        while True:
            try:
                response = await client.get("/_dev/stats")
                recorded = int(response.json()["notifications_recorded"])
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if recorded >= expected:
                return time.time(), recorded
            if time.monotonic() > deadline:
                return None, recorded
            await asyncio.sleep(POLL_INTERVAL_S)  # poll interval, not a wait for the result


async def measure_idle_latency(
    service: Service,
    gateway: Gateway,
    workload: Workload,
    count: int,
    per_user: int,
    deadline: float,
) -> tuple[list[float], int]:
    """One event at a time to an idle service, the next only once the gateway has the last:
    each notification's ``received_at`` at the gateway minus the moment its event was posted
    (ms, sorted), and how many were sent."""
    headers = {"Authorization": f"Bearer {INTERNAL_API_KEY}"}
    posted: dict[str, float] = {}
    gateway.forget()
    async with (
        httpx.AsyncClient(base_url=service.base_url, timeout=REQUEST_TIMEOUT_S) as client,
        gateway.async_client() as gateway_client,
    ):
        for n, user in enumerate(workload.users[:count]):
            body = {"user_id": user, "channel": CHANNEL, "payload": _sample_payload()}
            posted[user] = time.time()
            response = await client.post("/internal/v1/events", headers=headers, json=body)
            if response.status_code != 202:
                break
            while time.monotonic() < deadline:
                stats = (await gateway_client.get("/_dev/stats")).json()
                if int(stats["notifications_recorded"]) >= (n + 1) * per_user:
                    break
                await asyncio.sleep(0.002)  # poll interval: the figure is the gateway's stamp
    latencies = sorted(
        (_received_at(r) - posted[workload.by_pushkey[r["pushkey"]].user]) * 1000
        for r in gateway.records()
        if r["pushkey"] in workload.by_pushkey and workload.by_pushkey[r["pushkey"]].user in posted
    )
    return latencies, len(posted)


class Database:
    """Read-only look at the service's outbox, for the checks (never during the clock)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def activity(self) -> dict[str, int] | None:
        """PostgreSQL's own counters for this database (pg_stat_database) and the WAL position:
        what the database did, read before and after the clock (None on SQLite)."""
        if self.url.startswith("sqlite"):
            return None
        import psycopg

        with psycopg.connect(self.url) as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            row = conn.execute(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched,"
                " blks_hit + blks_read, pg_current_wal_lsn() - '0/0'::pg_lsn"
                " FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        names = ("commits", "inserted", "updated", "deleted", "fetched", "blocks", "wal_bytes")
        return {name: int(value) for name, value in zip(names, row, strict=True)}

    def reset_statements(self) -> bool:
        """Start counting what each statement costs (pg_stat_statements, when the server loads
        it: ``shared_preload_libraries``); whether it does."""
        if self.url.startswith("sqlite"):
            return False
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            loaded = conn.execute(
                "SELECT setting LIKE '%pg_stat_statements%' FROM pg_settings"
                " WHERE name = 'shared_preload_libraries'"
            ).fetchone()
            if not loaded or not loaded[0]:
                return False
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
                " WHERE datname = current_database()), 0)"
            )
        return True

    def statements(self, top: int = 6) -> list[dict[str, Any]]:
        """The statements of this database that took the most time since the reset, with what
        they cost: calls, execution ms, rows, blocks, WAL bytes."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time, rows,"
                " shared_blks_hit + shared_blks_read, wal_bytes FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND query NOT LIKE '%%pg_stat_statements%%'"
                " ORDER BY total_exec_time DESC LIMIT %s",
                (top,),
            ).fetchall()
        names = ("statement", "calls", "exec_ms", "rows", "blocks", "wal_bytes")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def analyze(self) -> None:
        """Vacuum and update the planner's statistics, as autovacuum does on a live database:
        the devices were registered a moment ago, and a table the planner believes empty gets
        plans for an empty table (a sequential scan of every device for each batch of events).
        A live service's devices registered long before its bursts, and autovacuum cleaned up
        after them then; here its vacuum of the registrations' tables would fall into the
        first rounds instead."""
        if self.url.startswith("sqlite"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30) as conn:
                conn.execute("ANALYZE")
            return
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

    def statuses(self, since_ms: int = 0) -> dict[str, tuple[str, str]]:
        """notification id → (pushkey index, status) of the notifications created from
        ``since_ms`` on (epoch ms): pushkeys are stored as their keyed index."""
        return {
            row[0]: (row[1], row[2])
            for row in self._rows(
                "SELECT n.id, p.pushkey, n.status FROM notifications n"
                " LEFT JOIN pushers p ON p.id = n.pusher_id WHERE n.created_at >= {since}",
                since_ms,
            )
        }

    def delivered(self, since_ms: int = 0) -> int:
        """How many notifications created from ``since_ms`` on are delivered."""
        query = (
            "SELECT count(*) FROM notifications WHERE status = 'delivered'"
            " AND created_at >= {since}"
        )
        return int(self._rows(query, since_ms)[0][0])

    def _rows(self, query: str, since_ms: int) -> list[Any]:
        if self.url.startswith("sqlite"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30) as conn:
                return conn.execute(query.format(since="?"), (since_ms,)).fetchall()
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(query.format(since="%s"), (since_ms,)).fetchall()


def _received_at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["received_at"]).timestamp()


def check_records(
    records: list[dict[str, Any]],
    stats: dict[str, Any],
    outbox: dict[str, tuple[str, str]],
    workload: Workload,
    problems: Problems,
    master_key: bytes,
) -> None:
    """Every notification exactly once at the gateway, to the right device, with the payload.
    ``outbox`` holds the stored pushkey index of each notification's pusher; the service's
    ``master_key`` gives the index of the pushkey the gateway got (the identity keys of a
    database are derived from the key it was first prepared with)."""
    identity = crypto.IdentityKeys.derive(master_key)
    expected = len(workload.subscribed)
    ids = Counter(r["id"] for r in records)
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    problems.note("duplicated", duplicated, f"{duplicated} notification ids recorded twice")
    missing = set(outbox) - set(ids)
    problems.note("lost", len(missing), f"{len(missing)} notifications never reached the gateway")
    stray = set(ids) - set(outbox)
    problems.note("errors", len(stray), f"{len(stray)} ids at the gateway that fdpush never made")
    problems.note(
        "lost",
        expected - len(outbox),
        f"the service made {len(outbox)} notifications for {expected} devices",
    )
    undelivered = Counter(status for _, status in outbox.values() if status != "delivered")
    problems.note(
        "errors",
        sum(undelivered.values()),
        f"not 'delivered' in the database: {dict(undelivered)}",
    )
    received, accepted = stats.get("items_received"), stats.get("items_accepted")
    if received != expected or accepted != expected or stats.get("items_failed"):
        problems.note(
            "errors",
            1,
            f"gateway counters: received {received}, accepted {accepted}, failed "
            f"{stats.get('items_failed')} for {expected} notifications (resends or refusals)",
        )
    per_device = Counter(r["pushkey"] for r in records)
    others = [k for k, n in per_device.items() if k not in workload.by_pushkey_subscribed or n != 1]
    others += [k for k in workload.by_pushkey_subscribed if k not in per_device]
    problems.note("errors", len(others), f"{len(others)} devices did not get exactly one")
    keys: dict[tuple[str, str], bytes] = {}
    wrong = 0
    for r in records:
        note = r["notification"]
        device = workload.by_pushkey.get(r["pushkey"])
        stored = outbox.get(r["id"], ("",))[0]
        if (
            device is None
            or r["app_id"] != APP_ID
            or stored != pushkey_index(identity, r["pushkey"])
        ):
            wrong += 1
            continue
        period = note["time_message_encrypted"]
        key = keys.get((device.pushkey, period))
        if key is None:
            key = keys[(device.pushkey, period)] = app_key(device.iss, device.period, period)
        try:
            payload = orjson.loads(app_open(key, note["ciphertext"]))
        except Exception:
            wrong += 1
            continue
        if (
            payload != workload.payloads[device.user]
            or note["key_identifier"] != device.key_identifier
            or note.get("identifier") != workload.payloads[device.user]["Identifier"]
        ):
            wrong += 1
    problems.note("errors", wrong, f"{wrong} notifications did not open to the right payload")


@dataclass(frozen=True, slots=True)
class Figures:
    """One row of the results table."""

    backend: str
    sender: str
    users: int
    devices_per_user: int
    events: int | None
    notifications: int
    concurrency: int
    seconds: float
    notifications_per_second: float
    vs_baseline: float | None
    of_sealing: float | None
    p50_ms: float
    p99_ms: float
    service_cpu_percent: float | None
    gateway_cpu_percent: float | None
    database_cpu_percent: float | None
    machine_cpu_percent: float | None
    service_peak_mb: float | None
    gateway_peak_mb: float | None
    problems: int
    problem_samples: list[str]
    extra: dict[str, Any]
    round: int | None = None  # which, when --rounds measured more than one

    @property
    def label(self) -> str:
        """The sender, and the round when there were several."""
        return self.sender if self.round is None else f"{self.sender}, round {self.round}"


@dataclass(slots=True)
class Usage:
    """CPU seconds of the service, the gateway, the load (this process), the database and the
    machine, between start and stop."""

    service_pids: list[int] | None
    gateway_pid: int
    worker_pid: int | None = None  # a separate ``fdpush worker`` (also in service_pids)
    start: dict[str, float | None] = field(default_factory=dict)
    used: dict[str, float | None] = field(default_factory=dict)

    def now(self) -> dict[str, float | None]:
        """CPU seconds used so far by each of them."""
        return {
            "service": None if self.service_pids is None else tree_cpu_seconds(self.service_pids),
            "worker": None if self.worker_pid is None else tree_cpu_seconds([self.worker_pid]),
            "gateway": cpu_seconds(self.gateway_pid),
            "load": cpu_seconds(os.getpid()),  # this process: the events' sender
            "database": database_cpu_seconds(),
            "machine": machine_busy_seconds(),
        }

    def begin(self) -> None:
        self.start = self.now()

    def end(self) -> None:
        now = self.now()
        self.used = {
            k: None if (b := self.start.get(k)) is None or (a := now[k]) is None else a - b
            for k in now
        }

    def percent(self, who: str, seconds: float) -> float | None:
        used = self.used.get(who)
        return None if used is None or seconds <= 0 else round(used / seconds * 100)


TIMELINE_INTERVAL_S = 0.1


async def sample_timeline(usage: Usage, stop: asyncio.Event) -> list[dict[str, float | None]]:
    """Until ``stop``: each TIMELINE_INTERVAL_S, the percent of one core each of ``usage``'s
    processes used in it (``api`` is the service without a separate worker). The sampling's
    own CPU counts as the load's; the kernel counts in 10 ms ticks, so a row is good to about
    ten points, and the machine's can read above 200 %."""
    rows: list[dict[str, float | None]] = []
    started = before_at = time.monotonic()
    before = usage.now()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TIMELINE_INTERVAL_S)
        at, now = time.monotonic(), usage.now()
        span = at - before_at
        row: dict[str, float | None] = {"t": round(at - started, 2)}
        for name, value in now.items():
            old = before.get(name)
            # A sum over processes: one that exited in between (a PostgreSQL backend whose
            # connection closed) takes its CPU with it, and the row reads low, never below 0.
            row[name] = (
                None if value is None or old is None else max(0.0, 100 * (value - old) / span)
            )
        if row["service"] is not None and row["worker"] is not None:
            # Read a moment apart, in 10 ms ticks: never below nothing.
            row["service"] = max(0.0, row["service"] - row["worker"])
        row["api"] = row.pop("service")
        rows.append(row)
        before, before_at = now, at
    return rows


def format_timeline(rows: list[dict[str, float | None]]) -> str:
    names = ("api", "worker", "database", "gateway", "load", "machine")
    header = ("s", "API", "worker", "PostgreSQL", "gateway", "load", "machine")
    return text_table(
        header,
        [(f"{row['t']:.2f}", *(_pct(row.get(name)) for name in names)) for row in rows],
        left_columns=0,
    )


@dataclass(frozen=True, slots=True)
class Stage:
    """What a backend's measurements run against."""

    backend: str
    options: Options
    service: Service
    gateway: Gateway
    db: Database
    sealing: SealingFigures
    workload: Workload


async def measure_backend(stage: Stage) -> tuple[list[Figures], dict[str, Any]]:
    """Register (setup), then each round: the end-to-end phase with its checks, and the naive
    sender with the same notifications."""
    options, service, gateway, workload = (
        stage.options,
        stage.service,
        stage.gateway,
        stage.workload,
    )
    setup: dict[str, Any] = {}
    # One client with one keep-alive connection per worker (see bench_api: a shared pool's
    # bookkeeping costs the load generator more than the service when there are many).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=service.base_url, limits=limits, timeout=REQUEST_TIMEOUT_S
                )
            )
            for _ in range(options.register_concurrency)
        ]
        steps = [("register", workload.register(gateway.push_url))]
        if options.explicit_channels or options.mixed_channels:
            steps.append(("choose channel", workload.enable_channel()))
        for name, calls in steps:
            phase = await run_phase(
                clients,
                service,  # run_phase uses only its cpu_seconds()
                calls,
                expect_empty_object,
                time_limit=options.time_limit,
            )
            if phase.errors:
                raise ServiceError(f"{name} failed: {phase.error_samples}")
            setup[f"{name}_seconds"] = round(phase.seconds, 2)
            setup[f"{name}_per_second"] = round(len(calls) / phase.seconds)
        setup["service_rss_after_setup_mb"] = peak_rss_mb(service.pid)
        stage.db.analyze()
    figures: list[Figures] = []
    for number in range(1, options.rounds + 1):
        if number > 1:
            gateway.forget()  # the naive sender's records of the round before
        end_to_end, records = await measure_end_to_end(stage, first=number == 1)
        baseline = await measure_naive(stage, records)
        ratio = _ratio(end_to_end.notifications_per_second, baseline.notifications_per_second)
        which = None if options.rounds == 1 else number
        figures += [
            replace(end_to_end, vs_baseline=_round(ratio, 2), round=which),
            replace(baseline, round=which),
        ]
    return figures, setup


async def measure_end_to_end(stage: Stage, *, first: bool) -> tuple[Figures, list[dict[str, Any]]]:
    """One event per user until the gateway acknowledged every notification (the clock runs
    from the first event request to the last acknowledgement), then the checks; in the first
    round also the profile (``--profile``) and the idle service's latency. Returns the figures
    (not yet compared with the naive sender) and the gateway's records."""
    backend, options, service, gateway, db, workload = (
        stage.backend,
        stage.options,
        stage.service,
        stage.gateway,
        stage.db,
        stage.workload,
    )
    problems = Problems()
    since_ms = int(time.time() * 1000)  # this round's notifications are created from now on
    batches = workload.event_batches()
    expected = len(workload.subscribed)
    profiler = worker_profiler = gateway_profiler = None
    if options.profile_dir is not None and first:
        # With FDPUSH_WORKERS the service's API processes are its children.
        profiler = Profiler(
            service.pid, options.profile_dir / f"service-{backend}.txt", subprocesses=True
        )
        gateway_profiler = Profiler(gateway.pid, options.profile_dir / f"gateway-{backend}.txt")
        if service.worker is not None:  # separate delivery processes: sampled apart
            worker_profiler = Profiler(
                service.worker.pid,
                options.profile_dir / f"worker-{backend}.txt",
                subprocesses=True,
            )
        await asyncio.sleep(1.0)  # let py-spy attach before the clock starts
    log_start = service.log_size()  # start-up warnings (dev auth) are not the phase's
    usage = Usage(service.pids, gateway.pid, None if service.worker is None else service.worker.pid)
    activity_before = db.activity()
    counting_statements = db.reset_statements()
    usage.begin()
    stop_sampling = asyncio.Event()
    sampling = (
        asyncio.create_task(sample_timeline(usage, stop_sampling))
        if options.timeline and first
        else None
    )
    deadline = time.monotonic() + options.time_limit
    sent, (seen_all_at, recorded) = await asyncio.gather(
        send_events(service.base_url, options.event_concurrency, batches, workload.reach, problems),
        wait_for_gateway(gateway, expected, deadline),
    )
    usage.end()
    stop_sampling.set()
    timeline = None if sampling is None else await sampling
    activity_after = db.activity()
    settled_at = None
    while time.monotonic() < deadline + 10:
        if db.delivered(since_ms) >= expected:
            settled_at = time.time()
            break
        await asyncio.sleep(POLL_INTERVAL_S)  # poll interval, not a wait for the result
    statements = db.statements() if counting_statements else []
    profile = None
    for other, whose in (
        (worker_profiler, "worker processes'"),
        (gateway_profiler, "gateway's"),
    ):
        if other is not None:
            other.stop()
            print(f"  {whose} profile: {other.output}")
    if profiler is not None:
        complaint = profiler.stop()
        profile = (
            {"error": complaint.strip()[-500:]}
            if complaint or not profiler.output.exists()
            else {"file": str(profiler.output), **profile_summary(profiler.output)}
        )
    service_peak = tree_peak_rss_mb(service.pids)
    gateway_peak = peak_rss_mb(gateway.pid)

    if seen_all_at is None:
        problems.note(
            "errors",
            1,
            f"time limit of {options.time_limit:g} s hit: the gateway recorded {recorded} of "
            f"{expected}",
        )
    records = gateway.records()
    stats = gateway.stats()
    outbox = db.statuses(since_ms)
    check_records(records, stats, outbox, workload, problems, service.master_key)
    for line in service.log_problems(log_start)[:ERROR_SAMPLES]:
        problems.note("errors", 1, f"service log: {line[:200]}")

    acknowledged = [_received_at(r) for r in records]
    last_ack = max(acknowledged) if acknowledged else math.nan
    seconds = last_ack - sent.started
    latencies = sorted(
        (_received_at(r) - sent.sent_at[workload.by_pushkey[r["pushkey"]].user]) * 1000
        for r in records
        if r["pushkey"] in workload.by_pushkey
        and workload.by_pushkey[r["pushkey"]].user in sent.sent_at
    )
    rate = len(records) / seconds if seconds > 0 else math.nan
    end_to_end_extra = {
        "first_event_request": sent.started,
        "last_event_accepted_after_s": round(sent.last_accepted - sent.started, 3),
        "events_accepted_per_second": round(
            len(workload.users) / (sent.last_accepted - sent.started)
        ),
        "gateway_seen_complete_after_s": None
        if seen_all_at is None
        else round(seen_all_at - sent.started, 3),
        "all_delivered_in_database_after_s": None
        if settled_at is None
        else round(settled_at - sent.started, 3),
        "gateway_requests": stats.get("requests"),
        "gateway_batch_sizes": stats.get("batch_sizes"),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "load_cpu_percent": usage.percent("load", seconds),
        "worker_cpu_percent": usage.percent("worker", seconds),
        "cpu_us_per_notification": cpu_per_notification(usage, len(records)),
        "profile": profile,
        "timeline": timeline,
        "database_statements": [
            {
                "statement": st["statement"][:160],
                "calls": st["calls"],
                "exec_us_per_notification": round(st["exec_ms"] * 1000 / len(records), 1)
                if records
                else None,
                "blocks_per_notification": round(st["blocks"] / len(records), 1)
                if records
                else None,
                "wal_bytes_per_notification": round(int(st["wal_bytes"]) / len(records))
                if records
                else None,
            }
            for st in statements
        ],
        "database_per_notification": None
        if activity_before is None or activity_after is None or not records
        else {
            name: round((activity_after[name] - activity_before[name]) / len(records), 2)
            for name in activity_before
        },
    }

    # --- an idle service, one event at a time: the latency of a lone event
    if first and options.idle_events and not options.mixed_channels:  # all users reached
        idle, idle_sent = await measure_idle_latency(
            service,
            gateway,
            workload,
            options.idle_events,
            options.devices_per_user,
            time.monotonic() + options.time_limit,
        )
        if len(idle) != idle_sent * options.devices_per_user:
            problems.note(
                "lost", idle_sent - len(idle), f"idle phase: {len(idle)} of {idle_sent} arrived"
            )
        end_to_end_extra["idle_latency_ms"] = {
            "events": idle_sent,
            "p50": round(percentile(idle, 0.50), 1) if idle else None,
            "p99": round(percentile(idle, 0.99), 1) if idle else None,
            "max": round(idle[-1], 1) if idle else None,
        }

    end_to_end = Figures(
        backend=backend,
        sender="fdpush, end to end",
        users=len(workload.users),
        devices_per_user=options.devices_per_user,
        events=len(workload.users),
        notifications=len(records),
        concurrency=options.event_concurrency,
        seconds=round(seconds, 3),
        notifications_per_second=round(rate, 1),
        vs_baseline=None,
        of_sealing=_round(_ratio(rate, stage.sealing.seals_per_second), 4),
        p50_ms=round(percentile(latencies, 0.50), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        service_cpu_percent=usage.percent("service", seconds),
        gateway_cpu_percent=usage.percent("gateway", seconds),
        database_cpu_percent=usage.percent("database", seconds),
        machine_cpu_percent=usage.percent("machine", seconds),
        service_peak_mb=_round(service_peak, 1),
        gateway_peak_mb=_round(gateway_peak, 1),
        problems=problems.total,
        problem_samples=problems.samples,
        extra={"lost": problems.lost, "duplicated": problems.duplicated, **end_to_end_extra},
    )
    return end_to_end, records


def cpu_per_notification(usage: Usage, notifications: int) -> dict[str, float]:
    """Microseconds of CPU per notification of each part that was measured: what a change
    costs or saves, which the rate shows only through the machine's own variance."""
    found: dict[str, float] = {}
    for who in ("service", "worker", "database", "gateway", "load", "machine"):
        used = usage.used.get(who)
        if used is not None and notifications:
            found[who] = round(used * 1_000_000 / notifications, 1)
    return found


async def measure_naive(stage: Stage, records: list[dict[str, Any]]) -> Figures:
    """The naive sender: the notifications of ``records`` again, one request each."""
    options, gateway = stage.options, stage.gateway
    gateway.forget()
    calls = [
        Call(
            "POST",
            ENCRYPTED_BATCH_PATH,
            {"Content-Type": "application/json"},
            orjson.dumps({"notifications": [{"id": r["id"], "notification": r["notification"]}]}),
        )
        for r in records
    ]
    baseline_problems = Problems()
    async with AsyncExitStack() as stack:
        gateway_clients = [
            await stack.enter_async_context(gateway.async_client())
            for _ in range(options.baseline_concurrency)
        ]
        base_usage = Usage(None, gateway.pid)
        base_usage.begin()
        phase = await run_phase(
            gateway_clients,
            gateway,  # run_phase uses only its cpu_seconds()
            calls,
            expect_one_success,
            time_limit=options.time_limit,
        )
        base_usage.end()
    baseline_stats = gateway.stats()
    baseline_problems.note("errors", phase.errors, f"naive sender: {phase.error_samples}")
    if baseline_stats.get("notifications_recorded") != len(calls):
        baseline_problems.note(
            "errors",
            1,
            f"naive sender: the gateway recorded {baseline_stats.get('notifications_recorded')} "
            f"of {len(calls)}",
        )
    base_rate = len(calls) / phase.seconds if phase.seconds > 0 else math.nan
    base_latencies = sorted(x * 1000 for x in phase.latencies)
    return Figures(
        backend=stage.backend,
        sender="naive, 1 per request",
        users=len(stage.workload.users),
        devices_per_user=options.devices_per_user,
        events=None,
        notifications=len(calls),
        concurrency=options.baseline_concurrency,
        seconds=round(phase.seconds, 3),
        notifications_per_second=round(base_rate, 1),
        vs_baseline=1.0,
        of_sealing=_round(_ratio(base_rate, stage.sealing.seals_per_second), 4),
        p50_ms=round(percentile(base_latencies, 0.50), 1),
        p99_ms=round(percentile(base_latencies, 0.99), 1),
        service_cpu_percent=None,
        gateway_cpu_percent=base_usage.percent("gateway", phase.seconds),
        database_cpu_percent=None,
        machine_cpu_percent=base_usage.percent("machine", phase.seconds),
        service_peak_mb=None,
        gateway_peak_mb=None,
        problems=baseline_problems.total,
        problem_samples=baseline_problems.samples,
        extra={"bench_cpu_percent": round(phase.bench_cpu_s / phase.seconds * 100)},
    )


def _ratio(value: float, to: float) -> float | None:
    return None if not to or math.isnan(value) or math.isnan(to) else value / to


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def expect_one_success(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        results = response.json().get("results")
        if isinstance(results, list) and len(results) == 1 and results[0]["status"] == "success":
            return None
    return f"{response.status_code} {response.text[:200]!r}"


# --- running it --------------------------------------------------------------------------------


@contextmanager
def database_for(backend: str, options: Options, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'fdpush.db'}"
    else:
        with postgres_database(options.postgres_url, options.postgres_locale) as url:
            yield url


def run_backend(
    backend: str, options: Options, sealing: SealingFigures
) -> tuple[list[Figures], dict[str, Any]]:
    """Gateway, service and a fresh database of ``backend``; measure; clean up."""
    loop_factory, _ = _event_loop_factory()
    workload = Workload(options)
    with (
        tempfile.TemporaryDirectory(prefix=f"fdpush-bench-delivery-{backend}-") as tmp,
        database_for(backend, options, Path(tmp)) as database_url,
    ):
        workdir = Path(tmp)
        print(f"\n[{backend}] starting the gateway and the service ...", flush=True)
        pki = make_test_pki(workdir / "pki")
        gateway = Gateway(workdir / "gateway", pki, len(workload.devices))
        try:
            service = Service(options, database_url, workdir, gateway.running.url, pki)
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    figures, setup = runner.run(
                        measure_backend(
                            Stage(
                                backend,
                                options,
                                service,
                                gateway,
                                Database(database_url),
                                sealing,
                                workload,
                            )
                        )
                    )
            except ServiceError as exc:
                raise ServiceError(f"{exc}\n--- service log ---\n{service.log_tail()}") from None
            finally:
                service.stop()
                if options.logs_dir is not None:
                    options.logs_dir.mkdir(parents=True, exist_ok=True)
                    for name in ("service.log", "worker.log"):
                        if (workdir / name).exists():
                            shutil.copy(workdir / name, options.logs_dir / f"{backend}-{name}")
        finally:
            gateway.stop()
    steps = f"registered {len(workload.devices)} devices in {setup['register_seconds']:.1f} s"
    if "enable channel_seconds" in setup:
        steps += f", enabled the channel on each in {setup['enable channel_seconds']:.1f} s"
    print(f"[{backend}] setup (not timed): {steps}", flush=True)
    return figures, setup


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def format_table(figures: list[Figures]) -> str:
    header = (
        "backend",
        "sender",
        "devices",
        "events",
        "notifications",
        "conc",
        "seconds",
        "notif/s",
        "x baseline",
        "of sealing",
        "p50 ms",
        "p99 ms",
        "svc CPU",
        "gw CPU",
        "db CPU",
        "all CPU",
        "svc peak MB",
        "gw peak MB",
        "problems",
    )
    rows = [
        (
            f.backend,
            f.label,
            f"{f.users * f.devices_per_user} ({f.users}x{f.devices_per_user})",
            "-" if f.events is None else str(f.events),
            str(f.notifications),
            str(f.concurrency),
            f"{f.seconds:.2f}",
            _num(f.notifications_per_second),
            "-" if f.vs_baseline is None else f"{f.vs_baseline:.2f}",
            "-" if f.of_sealing is None else f"{f.of_sealing * 100:.1f}%",
            _num(f.p50_ms, 1),
            _num(f.p99_ms, 1),
            _pct(f.service_cpu_percent),
            _pct(f.gateway_cpu_percent),
            _pct(f.database_cpu_percent),
            _pct(f.machine_cpu_percent),
            _num(f.service_peak_mb),
            _num(f.gateway_peak_mb),
            str(f.problems),
        )
        for f in figures
    ]
    return text_table(header, rows, left_columns=3)


def round_medians(figures: list[Figures]) -> dict[str, dict[str, Any]]:
    """Per backend measured in more than one round: each round's rate of fdpush and of the
    naive sender, and fdpush's ratio to the naive sender of its round, with their medians."""
    found: dict[str, dict[str, Any]] = {}
    for backend in dict.fromkeys(f.backend for f in figures):
        mine = [f for f in figures if f.backend == backend]
        ours = [f for f in mine if f.events is not None]
        if len(ours) < 2:
            continue
        naive = [f.notifications_per_second for f in mine if f.events is None]
        ratios = [f.vs_baseline for f in ours if f.vs_baseline is not None]
        found[backend] = {
            "rounds": len(ours),
            "fdpush": [f.notifications_per_second for f in ours],
            "fdpush_median": statistics.median(f.notifications_per_second for f in ours),
            "naive": naive,
            "naive_median": statistics.median(naive),
            "vs_baseline": ratios,
            "vs_baseline_median": statistics.median(ratios) if ratios else math.nan,
        }
    return found


def header_lines(
    command: str, machine: dict[str, Any], databases: list[str], options: Options
) -> list[str]:
    _, loop_name = _event_loop_factory()
    service = shlex.join([options.python, "-m", "fdpush", "serve", "--no-access-log"])
    channel = (
        "catalog default not_set, enabled on every device through POST channels/{pushkey}"
        if options.explicit_channels
        else "catalog default enabled, so every device is subscribed"
    )
    busy = machine.get("busy_percent_before")
    return [
        "fdpush delivery benchmark",
        f"  command:  {command}",
        f"  machine:  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}, {machine['platform']}",
        f"  python:   {machine['python']}, fdpush {machine['fdpush']}, httpx {machine['httpx']}, "
        f"cryptography {machine['cryptography']}",
        f"  service:  {service} (one process on 127.0.0.1"
        + (
            f", without its worker) + fdpush worker --processes {options.worker_processes}"
            if options.worker_processes
            else " with the delivery worker in it)"
        )
        + ", dev auth, no rate limit",
        "  gateway:  fdpush gateway on 127.0.0.1, mutual TLS (throwaway PKI), HTTP/1.1, "
        "records every notification in memory",
        f"  database: {'; '.join(databases) or '-'}",
        f"  devices:  {options.devices} = {options.users} users x {options.devices_per_user}, "
        f"app_id {APP_ID}, each registered with a fresh iss (setup, not timed)",
        f"  channel:  {CHANNEL}, {channel}",
        f"  events:   one per user ({options.users}), {options.events_per_request} per "
        f"POST /internal/v1/events/batch, {options.event_concurrency} requests in flight, "
        f"{loop_name}",
        "  naive:    one POST notifyEncrypted/batch per notification, "
        f"{options.baseline_concurrency} in flight (one keep-alive connection each), the same "
        "notifications, no database",
        "  before:   "
        + ("-" if busy is None else f"the machine was {busy:.0f}% busy (of one core) at start"),
    ]


def report_problems(figures: list[Figures]) -> None:
    total = sum(f.problems for f in figures)
    print(f"\n{'!' * 72}", file=sys.stderr)
    print(f"FAILED: {total} problem(s): lost, duplicated or wrong notifications", file=sys.stderr)
    for f in figures:
        for sample in f.problem_samples:
            print(f"  {f.backend} / {f.label}: {sample}", file=sys.stderr)
    print("!" * 72, file=sys.stderr)


def print_profile(backend: str, profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"\n[{backend}] py-spy failed: {profile['error']}")
        return
    print(f"\n[{backend}] service profile: {profile['samples']} samples -> {profile['file']}")
    print("  own time (the function itself):")
    for name, _, share in profile["own"]:
        print(f"    {share:5.1f}%  {name}")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    command = (
        shlex.join(sys.orig_argv) if argv is None else shlex.join(["bench_delivery.py", *argv])
    )
    machine = machine_info()
    machine["cryptography"] = _version("cryptography")
    databases, skipped = describe_databases(
        options.backends, options.postgres_url, machine, options.postgres_locale
    )
    announce(header_lines(command, machine, databases, options), machine, skipped)

    sample_payload = orjson.dumps(_sample_payload())
    sealing = measure_sealing(options.seal_iterations, sample_payload)
    print(
        f"\nsealing alone: seal_notification of a {sealing.payload_bytes}-byte payload "
        f"(frame + AES-256-GCM + Base64) = {sealing.microseconds_per_seal:.2f} us -> "
        f"{sealing.seals_per_second:,.0f} seals/s on one core ({sealing.iterations} calls)",
        flush=True,
    )

    figures: list[Figures] = []
    setups: dict[str, Any] = {}
    for backend in options.backends:
        if backend in skipped:
            continue
        try:
            rows, setups[backend] = run_backend(backend, options, sealing)
        except ServiceError as exc:
            print(f"\nFAILED: {backend}: {exc}", file=sys.stderr)
            return EXIT_NO_SERVICE
        figures.extend(rows)

    if not figures:
        print("\nnothing was measured (every backend asked for was skipped)")
        return EXIT_OK
    print()
    print(format_table(figures))
    for f in figures:
        if f.events is not None:
            x = f.extra
            who = f.backend if f.round is None else f"{f.backend}, round {f.round}"
            print(
                f"  {who}: all {f.events} events accepted (202) after "
                f"{x['last_event_accepted_after_s']:.2f} s ({x['events_accepted_per_second']:,} "
                f"events/s); all 'delivered' in the database after "
                f"{_num(x['all_delivered_in_database_after_s'], 2)} s; "
                f"{x['gateway_requests']} gateway requests; latency max {_num(x['max_ms'], 1)} ms; "
                f"the load (this process) used {_pct(x['load_cpu_percent'])} CPU"
            )
            if x.get("worker_cpu_percent") is not None and f.service_cpu_percent is not None:
                print(
                    f"  {who}: of the service's {_pct(f.service_cpu_percent)} CPU, the "
                    f"worker processes used {_pct(x['worker_cpu_percent'])}, the API "
                    f"{_pct(f.service_cpu_percent - x['worker_cpu_percent'])}"
                )
            cpu = x.get("cpu_us_per_notification")
            if cpu:
                names = {"service": "fdpush", "worker": "its worker processes"}
                print(
                    f"  {who}: CPU per notification: "
                    + ", ".join(f"{names.get(k, k)} {v:.0f} us" for k, v in cpu.items())
                )
            per = x.get("database_per_notification")
            if per:
                print(
                    f"  {who}: per notification the database committed "
                    f"{per['commits']:.2f} transactions, inserted {per['inserted']:.2f}, updated "
                    f"{per['updated']:.2f} and read {per['fetched']:.2f} rows, touched "
                    f"{per['blocks']:.1f} blocks and wrote {per['wal_bytes']:,.0f} bytes of WAL"
                )
            for st in x.get("database_statements") or ():
                blocks = st["blocks_per_notification"]
                print(
                    f"    {st['exec_us_per_notification']:7.1f} us {blocks:5.1f}"
                    f" blocks {st['wal_bytes_per_notification']:6,} B WAL {st['calls']:6,} calls"
                    f"  {st['statement'][:70]}"
                )
            if x.get("timeline"):
                print(
                    f"  {who}: CPU in percent of one core, each "
                    f"{TIMELINE_INTERVAL_S * 1000:.0f} ms of the measured phase (--timeline):"
                )
                print(textwrap.indent(format_timeline(x["timeline"]), "    "))
            idle = x.get("idle_latency_ms")
            if idle:
                print(
                    f"  {who}: idle service, {idle['events']} events one at a time: "
                    f"event -> gateway p50 {_num(idle['p50'], 1)} ms, p99 {_num(idle['p99'], 1)} "
                    f"ms, max {_num(idle['max'], 1)} ms"
                )
    medians = round_medians(figures)
    for backend, m in medians.items():
        print(
            f"  {backend}, {m['rounds']} rounds alternated: fdpush "
            f"{' · '.join(_num(x) for x in m['fdpush'])} notif/s, median "
            f"{_num(m['fdpush_median'])}; naive {' · '.join(_num(x) for x in m['naive'])}, median "
            f"{_num(m['naive_median'])}; x naive "
            f"{' · '.join(f'{x:.2f}' for x in m['vs_baseline'])}, median "
            f"{m['vs_baseline_median']:.2f}"
        )
    for f in figures:
        if f.extra.get("profile"):
            print_profile(f.backend, f.extra["profile"])
    if options.json_path is not None:
        document = {
            "command": command,
            "machine": machine,
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(options).items()
                if k not in ("json_path", "postgres_url")
            },
            "event_loop": _event_loop_factory()[1],
            "databases": databases,
            "skipped": skipped,
            "sealing": asdict(sealing),
            "setup": setups,
            "results": [asdict(f) for f in figures],
            "round_medians": medians,
        }
        options.json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nfigures written to {options.json_path}")

    if any(f.problems for f in figures):
        report_problems(figures)
        return EXIT_ERRORS
    print(
        "\nOK: every notification acknowledged by the gateway exactly once, opened by the "
        "app's key to the payload sent, and 'delivered' in the database"
    )
    return EXIT_OK


def _sample_payload() -> dict[str, str]:
    return {
        "ChannelId": CHANNEL,
        "Identifier": "160.000.000.001.000.01",
        "IdentifierType": "PrescriptionId",
    }


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
