"""Benchmark of the Client-FD Push API: ``POST pushers/set`` and ``GET channels/{pushkey}``.

What it measures
    Requests per second and the p50 / p99 latency of two endpoints of the *real* service, under
    wrk (a C load generator) at ``--concurrency`` keep-alive connections, on SQLite and on
    PostgreSQL, next to the *floor*: ``floor_app.py``, a minimal FastAPI + uvicorn endpoint
    doing one indexed SELECT through asyncpg, measured on the same database, machine and load
    generator in the same run. Each fdpush row shows its share of the floor and the target:

    - ``POST /push/v1/pushers/set``: half creates of new devices, half updates of registered
      ones, every body with a real encryption block and a fresh ``iss`` (so each request derives
      and seals a key generation, as in production). Target: >= 25 % of the floor, p99 < 100 ms.
    - ``GET /push/v1/channels/{pushkey}``: the channel states of registered devices; pushkeys
      contain ``/``, ``+`` and ``=`` and travel URL-encoded; half the devices have stored states.
      Target: >= 50 % of the floor, p99 < 50 ms.

How
    For each backend it starts ``<python> -m fdpush serve --no-access-log`` (``FDPUSH_WORKERS``
    = ``--workers``) as a subprocess on a free loopback port (dev authentication, no rate
    limit, an allow-list and a channel catalog) with a fresh database: an SQLite file in a
    temporary directory, or a PostgreSQL database it creates on the local server and drops
    afterwards (skipped with a notice when the server is unreachable). It waits for
    ``/health/ready`` with a deadline and registers the devices (not timed). Per scenario it
    then sends ``--warmup`` requests with httpx and compares *every* answer with the expected
    body, and then runs wrk for ``--duration`` seconds (``wrk_load.py`` makes the Lua script).
    After the PostgreSQL service it stops the service and measures the floor on the same
    database and devices.

    Errors: a warm-up answer that is not 200 with the expected body, an answer wrk sees with a
    status of 400 or more, or a socket error. A run with errors says so loudly and exits 1.

    Load generator, service and database share the machine, so the figures are for the whole
    box. The CPU columns (Linux only; percent of one core, so up to 100 x CPUs) show who used
    the processors while wrk ran: ``svc`` the service's processes, ``db`` the PostgreSQL server
    processes on this machine, ``all`` the whole machine (the rest is wrk and anything else
    running, which would make the figures meaningless).

Usage
    .venv/bin/python bench/bench_api.py                  # both backends, 15 s per scenario
    .venv/bin/python bench/bench_api.py --quick          # 3 s per scenario, a smoke run
    .venv/bin/python bench/bench_api.py --backend postgresql --workers 2 --json out.json

Needs wrk (Debian/Ubuntu: ``apt-get install wrk``). Exit status: 0 every request answered as
expected (or every backend was skipped), 1 errors, 2 bad arguments or no wrk, 3 the service
did not start or the unmeasured setup failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import shlex
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import jwt

from fdpush import crypto
from fdpush.gateway.runner import stop_process
from wrk_load import WrkResult, get_script, run_wrk, set_script, wrk_missing

DEV_SECRET = "bench-secret-0123456789abcdef0123456789"
GATEWAY_HOST = "gateway.bench.test"
GATEWAY_URL = f"https://{GATEWAY_HOST}/push/v1/"
APP_ID = "de.gematik.bench.apns"
CHANNELS = (
    ("erp.task.activate", "enabled"),
    ("erp.communication.new", "not_set"),
    ("erp.task.close", "disabled"),
    ("erp.task.abort", "not_set"),
)
SET_PATH = "/push/v1/pushers/set"
CHANNELS_PATH = "/push/v1/channels/"
SCENARIO_SET = "POST pushers/set"
SCENARIO_GET = "GET channels/{pushkey}"
MAX_PUSHERS_PER_USER = 10_000  # the service's upper bound; creates accumulate per user
STARTUP_DEADLINE_S = 30.0
REQUEST_TIMEOUT_S = 30.0
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ERROR_SAMPLES = 5
IDLE_WARNING_PERCENT = 25.0

EXIT_OK, EXIT_ERRORS, EXIT_NO_SERVICE = 0, 1, 3  # argparse exits with 2 on bad arguments


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    backends: tuple[str, ...]
    scenarios: tuple[str, ...]
    duration: float
    warmup: int
    concurrency: int
    threads: int
    workers: int
    floor: bool
    users: int
    devices_per_user: int
    time_limit: float
    postgres_url: str
    python: str
    json_path: Path | None
    service_env: tuple[tuple[str, str], ...] = ()
    postgres_locale: str | None = None


def parse_service_env(
    parser: argparse.ArgumentParser, items: list[str]
) -> tuple[tuple[str, str], ...]:
    """``--service-env FDPUSH_NAME=VALUE`` items as (name, value) pairs; a bad one is a usage
    error."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("FDPUSH_"):
            parser.error(f"--service-env {item!r}: expected FDPUSH_NAME=VALUE")
        pairs.append((name, value))
    return tuple(pairs)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark POST pushers/set and GET channels/{pushkey} of the real fdpush "
        "service on SQLite and PostgreSQL with wrk, against a minimal FastAPI + asyncpg floor.",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="which database(s) to measure (default: both)",
    )
    parser.add_argument(
        "--scenario",
        choices=("set", "get", "both"),
        default="both",
        help="set = POST pushers/set, get = GET channels/{pushkey} (default: both)",
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per scenario (default 15; quick 3)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help="checked requests before each scenario, every answer compared (default 500)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes of the service: fdpush serve --workers N (default 1)",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="do not measure the floor (the minimal FastAPI + asyncpg app)",
    )
    parser.add_argument("--users", type=int, help="distinct users (default 200; quick 20)")
    parser.add_argument(
        "--devices-per-user", type=int, default=2, help="registered devices per user (default 2)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds a checked phase may take before it counts as failed (default 300)",
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
        "--service-env",
        action="append",
        default=[],
        metavar="FDPUSH_X=VALUE",
        help="another setting for the service, e.g. FDPUSH_SERVE_WORKER=0 (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run: 3 s per scenario, 20 users"
    )
    args = parser.parse_args(argv)

    duration = args.duration if args.duration is not None else (3.0 if args.quick else 15.0)
    warmup = args.warmup if args.warmup is not None else (100 if args.quick else 500)
    users = args.users if args.users is not None else (20 if args.quick else 200)
    checks = (
        (1 <= duration <= 600, "--duration must be 1..600 seconds"),
        (0 <= warmup <= 200_000, "--warmup must be 0..200000"),
        (1 <= args.concurrency <= 1024, "--concurrency must be 1..1024"),
        (1 <= args.threads <= 64, "--threads must be 1..64"),
        (1 <= args.workers <= 64, "--workers must be 1..64"),
        (1 <= users <= 100_000, "--users must be 1..100000"),
        (1 <= args.devices_per_user <= 10, "--devices-per-user must be 1..10"),
        (args.time_limit > 0, "--time-limit must be positive"),
    )
    for ok, message in checks:
        if not ok:
            parser.error(message)
    missing = wrk_missing()
    if missing is not None:
        parser.error(missing)
    service_env = parse_service_env(parser, args.service_env)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    return Options(
        backends=backends,
        scenarios=(SCENARIO_SET, SCENARIO_GET)
        if args.scenario == "both"
        else ((SCENARIO_SET,) if args.scenario == "set" else (SCENARIO_GET,)),
        duration=duration,
        warmup=warmup,
        concurrency=args.concurrency,
        threads=args.threads,
        workers=args.workers,
        floor=not args.no_floor,
        users=users,
        devices_per_user=args.devices_per_user,
        time_limit=args.time_limit,
        postgres_url=args.postgres_url,
        postgres_locale=args.postgres_locale,
        python=args.python,
        json_path=args.json_path,
        service_env=service_env,
    )


# --- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "fdpush": _package_version("fdpush"),
        "httpx": _package_version("httpx"),
        "sqlite": sqlite3.sqlite_version,
    }


def machine_busy_seconds() -> float | None:
    """CPU seconds all processors of the machine have spent busy so far (Linux), else None."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    ticks = [int(value) for value in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def machine_busy_percent(seconds: float = 1.0) -> float | None:
    """How busy the machine is right now, in percent of one core (Linux), else None."""
    before = machine_busy_seconds()
    time.sleep(seconds)  # a measuring window, not a wait for anything
    after = machine_busy_seconds()
    if before is None or after is None:
        return None
    return (after - before) / seconds * 100


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (Linux); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process and its living descendants (Linux), else None."""
    if not Path(f"/proc/{pid}").is_dir():
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += _process_cpu_seconds(current)
        todo.extend(_children(current))
    return total


def postgres_cpu_seconds() -> float | None:
    """CPU seconds of this machine's PostgreSQL server processes (Linux), else None.

    Every process named ``postgres``: the server of the benchmark's database when it runs on
    this machine (the benchmark expects to be the only one using it while it measures).
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0.0
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _process_cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_problem(admin_url: str) -> str | None:
    """None when the server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def postgres_version(admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, connect_timeout=3) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


@contextmanager
def postgres_database(admin_url: str, locale: str | None = None) -> Iterator[str]:
    """A fresh, empty database for one run; dropped on the way out. Yields its URL. With
    ``locale`` the database compares text under it, as one created for a German deployment
    may: a libc locale the server has (``de_DE.UTF-8``), or ``icu:`` and an ICU locale
    (``icu:de-DE``); otherwise it takes the server's default."""
    import psycopg
    from psycopg import sql

    name = f"fdpush_bench_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if locale is not None and locale.startswith("icu:"):
        create = sql.SQL("{} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            create, sql.Literal(locale.removeprefix("icu:"))
        )
    elif locale is not None:
        create = sql.SQL("{} TEMPLATE template0 LOCALE {}").format(create, sql.Literal(locale))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield urllib.parse.urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the service -------------------------------------------------------------------------------


class ServiceError(Exception):
    """The service did not come up, or the unmeasured setup failed; the message says which."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A server process on loopback: ``fdpush serve`` with the benchmark's configuration, or
    another command (the floor) given with its environment."""

    def __init__(
        self,
        python: str,
        database_url: str,
        workdir: Path,
        *,
        workers: int = 1,
        settings: tuple[tuple[str, str], ...] = (),
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        ready_path: str = "/health/ready",
    ) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.name = "fdpush serve" if command is None else "the floor"
        self.log_path = workdir / f"service-{self.port}.log"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
        self.master_key = os.urandom(32)
        if command is None:
            self.command = [python, "-m", "fdpush", "serve", "--no-access-log"]
            env = {
                "FDPUSH_HOST": "127.0.0.1",
                "FDPUSH_PORT": str(self.port),
                "FDPUSH_DATABASE_URL": database_url,
                "FDPUSH_MASTER_KEY": base64.b64encode(self.master_key).decode(),
                "FDPUSH_AUTH_MODE": "dev",
                "FDPUSH_AUTH_DEV_SECRET": DEV_SECRET,
                "FDPUSH_RATE_LIMIT": "0",
                "FDPUSH_GATEWAY_ALLOWLIST": GATEWAY_HOST,
                "FDPUSH_CHANNELS": ",".join(f"{ident}={status}" for ident, status in CHANNELS),
                "FDPUSH_MAX_PUSHERS_PER_USER": str(MAX_PUSHERS_PER_USER),
                "FDPUSH_WORKERS": str(workers),
                **dict(settings),
            }
        else:
            self.command = [c.replace("{port}", str(self.port)) for c in command]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env={**base_env, **(env or {})},
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.process.returncode}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=1.0).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval, not a wait for readiness
        raise ServiceError(f"{self.name} was not ready within {STARTUP_DEADLINE_S:.0f} s")

    def cpu_seconds(self) -> float | None:
        """CPU time the service's processes have used so far (Linux), else None."""
        return process_tree_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_process(self.process)


# --- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One prepared request."""

    method: str
    path: str
    headers: dict[str, str]
    content: bytes | None = None


Check = Callable[[httpx.Response], str | None]


def _token(user_id: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + 6 * 3600}, DEV_SECRET, "HS256")


def _pushkey() -> str:
    """A pushkey shaped like a real device token, with the characters that need URL encoding."""
    return base64.b64encode(os.urandom(30)).decode() + f"/+{uuid.uuid4().hex[:8]}="


def _registration(pushkey: str) -> bytes:
    return json.dumps(
        {
            "kind": "http",
            "app_id": APP_ID,
            "pushkey": pushkey,
            "app_display_name": "Bench App",
            "device_display_name": "Bench Phone",
            "lang": "de",
            "data": {"url": GATEWAY_URL, "format": "event_id_only"},
            "append": False,
            "encryption": {
                "method": "aes-hmac-sha256",
                "iss": os.urandom(32).hex(),
                "time_iss_created": time.strftime("%Y-%m"),
                "key_identifier": str(uuid.uuid4()),
            },
        }
    ).encode()


class Workload:
    """The users, their tokens and registered devices, and the request lists of each phase."""

    def __init__(self, users: int, devices_per_user: int) -> None:
        self.users = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(users)]
        tokens = {user: _token(user) for user in self.users}
        self.read_headers = {
            user: {"Authorization": f"Bearer {tokens[user]}"} for user in self.users
        }
        self.write_headers = {
            user: {**self.read_headers[user], "Content-Type": "application/json"}
            for user in self.users
        }
        self.devices = [(user, _pushkey()) for _ in range(devices_per_user) for user in self.users]

    def register_devices(self) -> list[Call]:
        return [
            Call("POST", SET_PATH, self.write_headers[user], _registration(pushkey))
            for user, pushkey in self.devices
        ]

    def choose_channels(self) -> list[Call]:
        """Every other device stores a choice, so reads see stored states and defaults."""
        body = json.dumps({"channels": [{"id": CHANNELS[1][0], "status": "enabled"}]}).encode()
        return [
            Call("POST", _channels_path(pushkey), self.write_headers[user], body)
            for user, pushkey in self.devices[::2]
        ]

    def pushers_set(self, count: int) -> list[Call]:
        """Even requests create a new device, odd ones re-register a device (fresh iss each)."""
        calls = []
        for k in range(count):
            if k % 2 == 0:
                user, pushkey = self.users[k // 2 % len(self.users)], _pushkey()
            else:
                user, pushkey = self.devices[k // 2 % len(self.devices)]
            calls.append(Call("POST", SET_PATH, self.write_headers[user], _registration(pushkey)))
        return calls

    def get_channels(self, count: int, offset: int = 0) -> list[Call]:
        calls = []
        for k in range(offset, offset + count):
            user, pushkey = self.devices[k % len(self.devices)]
            calls.append(Call("GET", _channels_path(pushkey), self.read_headers[user]))
        return calls


def _channels_path(pushkey: str) -> str:
    return CHANNELS_PATH + urllib.parse.quote(pushkey, safe="")


def _describe(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:200]!r}"


def expect_empty_object(response: httpx.Response) -> str | None:
    if response.status_code != 200 or response.json() != {}:
        return _describe(response)
    return None


def expect_catalog(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return _describe(response)
    states = response.json().get("channels")
    if not isinstance(states, list) or [s.get("id") for s in states] != [c for c, _ in CHANNELS]:
        return _describe(response)
    return None


# --- the load generator ------------------------------------------------------------------------


@dataclass(slots=True)
class PhaseResult:
    """What one batch of requests did."""

    requests: int
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    service_cpu_s: float | None = None
    bench_cpu_s: float = 0.0
    machine_cpu_s: float | None = None

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(message)


async def run_phase(
    clients: list[httpx.AsyncClient],
    service: Service,
    calls: list[Call],
    check: Check,
    *,
    time_limit: float,
) -> PhaseResult:
    """Send ``calls`` from one worker per client; time each request and check its answer."""
    result = PhaseResult(requests=len(calls))
    queue = iter(calls)  # shared: each worker takes the next call when it is free

    async def worker(client: httpx.AsyncClient) -> None:
        for call in queue:
            started = time.perf_counter()
            try:
                response = await client.request(
                    call.method, call.path, headers=call.headers, content=call.content
                )
            except httpx.HTTPError as exc:
                result.latencies.append(time.perf_counter() - started)
                result.completed += 1
                result.error(f"{type(exc).__name__}: {exc}")
                continue
            result.latencies.append(time.perf_counter() - started)
            result.completed += 1
            try:
                problem = check(response)
            except ValueError as exc:  # not JSON
                problem = f"{_describe(response)} ({exc})"
            if problem is not None:
                result.error(f"{call.method} {call.path[:60]}: {problem}")

    service_cpu = service.cpu_seconds()
    machine_cpu = machine_busy_seconds()
    bench_cpu = time.process_time()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(time_limit):
            await asyncio.gather(*(worker(client) for client in clients[: len(calls)]))
    except TimeoutError:
        unfinished = len(calls) - result.completed
        result.errors += unfinished
        result.error_samples.append(f"time limit of {time_limit:g} s hit: {unfinished} unfinished")
    result.seconds = time.perf_counter() - started
    result.bench_cpu_s = time.process_time() - bench_cpu
    after = service.cpu_seconds()
    if service_cpu is not None and after is not None:
        result.service_cpu_s = after - service_cpu
    machine_after = machine_busy_seconds()
    if machine_cpu is not None and machine_after is not None:
        result.machine_cpu_s = machine_after - machine_cpu
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending list."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


@dataclass(frozen=True, slots=True)
class ScenarioFigures:
    """One row of the results table: one scenario of one server under wrk."""

    backend: str
    scenario: str
    server: str  # "fdpush" or "floor"
    workers: int
    connections: int
    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    service_cpu_percent: float | None
    database_cpu_percent: float | None
    machine_cpu_percent: float | None
    error_samples: list[str]
    floor_requests_per_second: float | None = None
    share_of_floor: float | None = None
    target_share: float | None = None
    target_p99_ms: float | None = None

    @property
    def meets_target(self) -> bool | None:
        if self.target_share is None or self.share_of_floor is None:
            return None
        return (
            self.share_of_floor >= self.target_share
            and self.target_p99_ms is not None
            and self.p99_ms < self.target_p99_ms
        )


# The targets at 32 connections: share of the floor's rate and p99.
TARGETS = {SCENARIO_GET: (0.50, 50.0), SCENARIO_SET: (0.25, 100.0)}


class CpuMeter:
    """CPU used by the service, the database server and the whole machine over one phase."""

    def __init__(self, service: Service, backend: str) -> None:
        self._service = service
        self._backend = backend
        self._start = self._read()

    def _read(self) -> tuple[float | None, float | None, float | None]:
        database = postgres_cpu_seconds() if self._backend == "postgresql" else None
        return self._service.cpu_seconds(), database, machine_busy_seconds()

    def percents(self, seconds: float) -> tuple[float | None, float | None, float | None]:
        end = self._read()
        return tuple(  # type: ignore[return-value]
            None if a is None or b is None else round((b - a) / seconds * 100)
            for a, b in zip(self._start, end, strict=True)
        )


def measure_wrk(
    backend: str,
    scenario: str,
    server: str,
    service: Service,
    script: str,
    options: Options,
    workdir: Path,
    warm_errors: list[str],
) -> ScenarioFigures:
    """One measured wrk phase against a running server."""
    meter = CpuMeter(service, backend)
    result: WrkResult = run_wrk(
        service.base_url,
        script,
        workdir,
        connections=options.concurrency,
        threads=options.threads,
        duration=options.duration,
    )
    svc_cpu, db_cpu, all_cpu = meter.percents(result.seconds or math.nan)
    samples = list(warm_errors)
    if result.errors:
        samples.append(f"wrk: {result.errors} answers with status >= 400 or socket errors")
    return ScenarioFigures(
        backend=backend,
        scenario=scenario,
        server=server,
        workers=options.workers if server == "fdpush" else 1,
        connections=options.concurrency,
        requests=result.requests,
        errors=result.errors + len(warm_errors),
        seconds=round(result.seconds, 2),
        requests_per_second=round(result.requests_per_second, 1),
        p50_ms=round(result.p50_ms, 2),
        p99_ms=round(result.p99_ms, 2),
        max_ms=round(result.max_ms, 2),
        service_cpu_percent=svc_cpu,
        database_cpu_percent=db_cpu,
        machine_cpu_percent=all_cpu,
        error_samples=samples,
    )


def _body_template() -> str:
    """A registration body with ``%s`` for pushkey, iss and key identifier (for wrk's Lua)."""
    marker = "\x01"
    body = json.loads(_registration(marker))
    body["encryption"]["iss"] = marker
    body["encryption"]["key_identifier"] = marker
    return json.dumps(body).replace("%", "%%").replace(json.dumps(marker), '"%s"')


async def checked_phase(
    service: Service, calls: list[Call], check: Check, options: Options
) -> PhaseResult:
    """Send ``calls`` over ``--concurrency`` httpx connections, every answer compared."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        # One client per connection: httpcore's pool is O(n^2) in its size per request.
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=service.base_url, limits=limits, timeout=REQUEST_TIMEOUT_S
                )
            )
            for _ in range(min(options.concurrency, 32))
        ]
        return await run_phase(clients, service, calls, check, time_limit=options.time_limit)


def _run(coroutine: Coroutine[Any, Any, PhaseResult]) -> PhaseResult:
    loop_factory, _ = _event_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)


def measure_backend(
    backend: str, service: Service, workload: Workload, options: Options, workdir: Path
) -> list[ScenarioFigures]:
    """Register the devices, then per scenario a checked warm-up and a measured wrk phase."""
    for name, calls, check in (
        ("registering the devices", workload.register_devices(), expect_empty_object),
        ("choosing channels", workload.choose_channels(), expect_empty_object),
    ):
        setup = _run(checked_phase(service, calls, check, options))
        if setup.errors:
            raise ServiceError(f"{name} failed: {setup.error_samples}")
    token_index = {user: k for k, user in enumerate(workload.users)}
    tokens = [
        workload.read_headers[u]["Authorization"].removeprefix("Bearer ") for u in workload.users
    ]
    scripts = {
        SCENARIO_SET: (
            workload.pushers_set(options.warmup),
            expect_empty_object,
            set_script(
                SET_PATH,
                tokens,
                [(token_index[u], pk) for u, pk in workload.devices],
                _body_template(),
            ),
        ),
        SCENARIO_GET: (
            workload.get_channels(options.warmup),
            expect_catalog,
            get_script(
                [
                    (_channels_path(pk), workload.read_headers[u]["Authorization"])
                    for u, pk in workload.devices
                ]
            ),
        ),
    }
    figures = []
    for scenario in (SCENARIO_SET, SCENARIO_GET):
        if scenario not in options.scenarios:
            continue
        warmup, check, script = scripts[scenario]
        warm = _run(checked_phase(service, warmup, check, options))
        warm_errors = [f"warm-up: {s}" for s in warm.error_samples][: warm.errors]
        figures.append(
            measure_wrk(backend, scenario, "fdpush", service, script, options, workdir, warm_errors)
        )
    return figures


def measure_floor(
    database_url: str, workload: Workload, options: Options, workdir: Path, master_key: bytes
) -> ScenarioFigures:
    """The floor app on the same database, the same devices, the same wrk settings. It is
    asked for what is stored (user pseudonyms and pushkey indexes, made from the service's
    ``master_key``), so its SELECT finds the same rows as fdpush's."""
    identity = crypto.IdentityKeys.derive(master_key)
    floor_url = urllib.parse.urlsplit(database_url)._replace(scheme="postgresql").geturl()
    service = Service(
        options.python,
        database_url,
        workdir,
        command=[
            options.python,
            "-m",
            "uvicorn",
            "floor_app:app",
            "--app-dir",
            str(Path(__file__).resolve().parent),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={"FLOOR_DATABASE_URL": floor_url},
        ready_path="/channels/x?user=x",
    )
    try:
        calls = [
            (
                f"/channels/{crypto.pushkey_index(identity, pk)}"
                f"?user={crypto.user_pseudonym(identity, u)}",
                "-",
            )
            for u, pk in workload.devices
        ]
        script = get_script(calls)
        # A short unmeasured run first, as fdpush gets its warm-up.
        run_wrk(
            service.base_url,
            script,
            workdir,
            connections=options.concurrency,
            threads=options.threads,
            duration=1,
        )
        return measure_wrk(
            "postgresql", SCENARIO_GET, "floor", service, script, options, workdir, []
        )
    finally:
        service.stop()


# --- running it --------------------------------------------------------------------------------


def _event_loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


@contextmanager
def database_for(backend: str, options: Options, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'fdpush.db'}"
    else:
        with postgres_database(options.postgres_url, options.postgres_locale) as url:
            yield url


def run_backend(backend: str, options: Options) -> list[ScenarioFigures]:
    """Start a service on a fresh database of ``backend``, measure it (and, on PostgreSQL,
    the floor on the same database), clean up."""
    with (
        tempfile.TemporaryDirectory(prefix=f"fdpush-bench-{backend}-") as tmp,
        database_for(backend, options, Path(tmp)) as database_url,
    ):
        workload = Workload(options.users, options.devices_per_user)
        service = Service(
            options.python,
            database_url,
            Path(tmp),
            workers=options.workers,
            settings=options.service_env,
        )
        try:
            figures = measure_backend(backend, service, workload, options, Path(tmp))
        except ServiceError as exc:
            raise ServiceError(f"{exc}\n--- service log ---\n{service.log_tail()}") from None
        finally:
            service.stop()
        if backend == "postgresql" and options.floor:
            figures.append(
                measure_floor(database_url, workload, options, Path(tmp), service.master_key)
            )
        return figures


def with_floor(figures: list[ScenarioFigures]) -> list[ScenarioFigures]:
    """Each fdpush row with the floor's rate, its share of it and its target."""
    floors = [f for f in figures if f.server == "floor"]
    if not floors:
        return figures
    floor = floors[0].requests_per_second
    out = []
    for f in figures:
        if f.server == "fdpush":
            share, p99 = TARGETS[f.scenario]
            f = replace(
                f,
                floor_requests_per_second=floor,
                share_of_floor=round(f.requests_per_second / floor, 3) if floor else None,
                target_share=share,
                target_p99_ms=p99,
            )
        out.append(f)
    return out


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _target(f: ScenarioFigures) -> str:
    if f.target_share is None or f.target_p99_ms is None:
        return "-"
    verdict = {True: "met", False: "MISSED", None: "-"}[f.meets_target]
    return f">={f.target_share:.0%}, p99<{f.target_p99_ms:.0f}: {verdict}"


def format_table(figures: list[ScenarioFigures]) -> str:
    header = (
        "backend",
        "scenario",
        "server",
        "procs",
        "conns",
        "req/s",
        "floor req/s",
        "of floor",
        "p50 ms",
        "p99 ms",
        "svc CPU",
        "db CPU",
        "all CPU",
        "errors",
        "target",
    )
    rows = [
        (
            f.backend,
            f.scenario,
            f.server,
            str(f.workers),
            str(f.connections),
            f"{f.requests_per_second:,.0f}",
            "-" if f.floor_requests_per_second is None else f"{f.floor_requests_per_second:,.0f}",
            "-" if f.share_of_floor is None else f"{f.share_of_floor:.0%}",
            _ms(f.p50_ms),
            _ms(f.p99_ms),
            _cpu(f.service_cpu_percent),
            _cpu(f.database_cpu_percent),
            _cpu(f.machine_cpu_percent),
            str(f.errors),
            _target(f),
        )
        for f in figures
    ]
    return text_table(header, rows, left_columns=3)


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]], *, left_columns: int) -> str:
    """Columns padded to fit, the first ``left_columns`` left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(width) if i < left_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def header_lines(
    command: str, machine: dict[str, Any], databases: list[str], options: Options
) -> list[str]:
    """What was measured, where and how: printed above the table."""
    service = shlex.join([options.python, "-m", "fdpush", "serve", "--no-access-log"])
    busy = machine.get("busy_percent_before")
    return [
        "fdpush API benchmark",
        f"  command:  {command}",
        f"  machine:  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}, {machine['platform']}",
        f"  python:   {machine['python']}, fdpush {machine['fdpush']}",
        f"  service:  {service} with FDPUSH_WORKERS={options.workers} (127.0.0.1, dev auth, "
        "no rate limit)",
        "  floor:    bench/floor_app.py under uvicorn, one process: one indexed SELECT through "
        "asyncpg" + ("" if options.floor else " (not measured: --no-floor)"),
        f"  database: {'; '.join(databases) or '-'}",
        f"  load:     wrk, {options.concurrency} connections, {options.threads} threads, "
        f"{options.duration:g} s per scenario after {options.warmup} checked requests (httpx); "
        f"{options.users} users x {options.devices_per_user} devices",
        "            pushers/set: 50% creates, 50% updates, each with a fresh iss",
        "  before:   "
        + ("-" if busy is None else f"the machine was {busy:.0f}% busy (of one core) at start"),
    ]


def report_errors(figures: list[ScenarioFigures]) -> None:
    errors = sum(f.errors for f in figures)
    print(f"\n{'!' * 72}", file=sys.stderr)
    print(f"FAILED: {errors} request(s) did not get the expected answer", file=sys.stderr)
    for f in figures:
        for sample in f.error_samples:
            print(f"  {f.backend} / {f.scenario}: {sample}", file=sys.stderr)
    print("!" * 72, file=sys.stderr)


def describe_databases(
    backends: tuple[str, ...],
    postgres_url: str,
    machine: dict[str, Any],
    locale: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """What each backend runs on (for the header), and the backends skipped with why; also
    records how busy the machine is before the run in ``machine``."""
    skipped: dict[str, str] = {}
    databases = []
    if "sqlite" in backends:
        databases.append(f"SQLite {machine['sqlite']} (a file in a temporary directory)")
    if "postgresql" in backends:
        problem = postgres_problem(postgres_url)
        shown_url = _without_password(postgres_url)
        if problem is None:
            server = postgres_version(postgres_url)
            in_locale = "" if locale is None else f", locale {locale}"
            databases.append(f"PostgreSQL {server} (a fresh database on {shown_url}{in_locale})")
        else:
            skipped["postgresql"] = f"unreachable at {shown_url}: {problem}"
    machine["busy_percent_before"] = machine_busy_percent()
    return databases, skipped


def announce(header: list[str], machine: dict[str, Any], skipped: dict[str, str]) -> None:
    """Print the header, a warning when the machine was busy, and the skipped backends."""
    print("\n".join(header))
    busy = machine["busy_percent_before"]
    if busy is not None and busy > IDLE_WARNING_PERCENT:
        print(
            "\nWARNING: something else is using the CPUs; the figures will be lower and "
            "noisier than this machine can do",
            file=sys.stderr,
        )
    for backend, reason in skipped.items():
        print(f"\nNOTICE: {backend} SKIPPED - {reason}", file=sys.stderr)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["bench_api.py", *argv])
    machine = machine_info()
    databases, skipped = describe_databases(
        options.backends, options.postgres_url, machine, options.postgres_locale
    )
    announce(header_lines(command, machine, databases, options), machine, skipped)

    figures: list[ScenarioFigures] = []
    for backend in options.backends:
        if backend in skipped:
            continue
        try:
            figures.extend(run_backend(backend, options))
        except ServiceError as exc:
            print(f"\nFAILED: {backend}: {exc}", file=sys.stderr)
            return EXIT_NO_SERVICE
    figures = with_floor(figures)

    if not figures:
        print("\nnothing was measured (every backend asked for was skipped)")
        return EXIT_OK
    print()
    print(format_table(figures))
    if options.json_path is not None:
        document = {
            "command": command,
            "machine": machine,
            "settings": {
                k: v for k, v in asdict(options).items() if k not in ("json_path", "postgres_url")
            },
            "load_generator": "wrk",
            "targets": {k: {"share_of_floor": v[0], "p99_ms": v[1]} for k, v in TARGETS.items()},
            "databases": databases,
            "skipped": skipped,
            "results": [asdict(f) for f in figures],
        }
        options.json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nfigures written to {options.json_path}")

    if any(f.errors for f in figures):
        report_errors(figures)
        return EXIT_ERRORS
    print("\nOK: every request answered 200 with the expected body")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
