"""Benchmark of the Client-FD Push API: ``POST pushers/set`` and ``GET channels/{pushkey}``.

What it measures
    Requests per second and the p50 / p99 latency of two endpoints of the *real* service, at a
    stated concurrency, on SQLite and on PostgreSQL:

    - ``POST /push/v1/pushers/set``: half creates of new devices, half updates of registered
      ones, every body with a real encryption block and a fresh ``iss`` (so each request derives
      and seals a key generation, as in production).
    - ``GET /push/v1/channels/{pushkey}``: the channel states of registered devices; pushkeys
      contain ``/``, ``+`` and ``=`` and travel URL-encoded; half the devices have stored states.

How
    For each backend it starts ``<python> -m fdpush serve --no-access-log`` as a subprocess on a
    free loopback port (dev authentication, no rate limit, an allow-list and a channel catalog)
    with a fresh database: an SQLite file in a temporary directory, or a PostgreSQL database it
    creates on the local server and drops afterwards (skipped with a notice when the server is
    unreachable). It waits for ``/health/ready`` with a deadline, registers the devices (not
    timed), then per scenario sends a warm-up and a fixed number of measured requests from
    ``--concurrency`` asyncio workers, each with an ``httpx.AsyncClient`` of its own holding
    one HTTP/1.1 keep-alive connection. All tokens and bodies are made before the clock starts.

    Every response must be 200 with the expected body; any other outcome is counted as an
    error, and a run with errors says so loudly and exits with status 1. Each scenario has a
    time limit (``--time-limit``); hitting it counts the unfinished requests as errors.

    The load generator runs on the same machine as the service and the database, so the
    figures are for the whole box. The CPU columns (Linux only; percent of one core, so up to
    100 x CPUs) show who used the processors during the measured phase: ``svc`` the service
    process, ``bench`` this load generator, ``all`` the whole machine (the rest is the
    database server and anything else running, which would make the figures meaningless).

Usage
    .venv/bin/python bench/bench_api.py                  # both backends, 3000 requests, 32 workers
    .venv/bin/python bench/bench_api.py --quick          # a ~300-request smoke run
    .venv/bin/python bench/bench_api.py --backend sqlite --concurrency 8 --json out.json

Exit status: 0 all requests answered as expected (or every backend was skipped), 1 errors,
2 bad arguments, 3 the service did not start or the unmeasured setup failed.
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
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import jwt

from fdpush.gateway.runner import stop_process

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
    requests: int
    warmup: int
    concurrency: int
    users: int
    devices_per_user: int
    time_limit: float
    postgres_url: str
    python: str
    json_path: Path | None


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark POST pushers/set and GET channels/{pushkey} of the real fdpush "
        "service on SQLite and PostgreSQL.",
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
        "--requests", type=int, help="measured requests per scenario (default 3000; quick 300)"
    )
    parser.add_argument(
        "--warmup", type=int, help="unmeasured requests before each scenario (default 10%%)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight (default 32)"
    )
    parser.add_argument("--users", type=int, help="distinct users (default 200; quick 20)")
    parser.add_argument(
        "--devices-per-user", type=int, default=2, help="registered devices per user (default 2)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds a scenario may take before it counts as failed (default 300)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"an admin URL of the PostgreSQL server to create the database on "
        f"(default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs `-m fdpush serve` (default: this one)",
    )
    parser.add_argument("--json", dest="json_path", type=Path, help="also write figures here")
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run: 300 requests, 20 users"
    )
    args = parser.parse_args(argv)

    requests = args.requests if args.requests is not None else (300 if args.quick else 3000)
    warmup = args.warmup if args.warmup is not None else max(requests // 10, 1)
    users = args.users if args.users is not None else (20 if args.quick else 200)
    checks = (
        (1 <= requests <= 200_000, "--requests must be 1..200000"),
        (0 <= warmup <= 200_000, "--warmup must be 0..200000"),
        (1 <= args.concurrency <= 1024, "--concurrency must be 1..1024"),
        (1 <= users <= 100_000, "--users must be 1..100000"),
        (1 <= args.devices_per_user <= 10, "--devices-per-user must be 1..10"),
        (args.time_limit > 0, "--time-limit must be positive"),
        (
            # pushers/set creates one new device every other request, spread over the users
            args.devices_per_user + math.ceil((requests + warmup) / 2 / users)
            <= MAX_PUSHERS_PER_USER,
            "too many requests for so few users (each user would pass 10000 pushers)",
        ),
    )
    for ok, message in checks:
        if not ok:
            parser.error(message)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    return Options(
        backends=backends,
        scenarios=(SCENARIO_SET, SCENARIO_GET)
        if args.scenario == "both"
        else ((SCENARIO_SET,) if args.scenario == "set" else (SCENARIO_GET,)),
        requests=requests,
        warmup=warmup,
        concurrency=args.concurrency,
        users=users,
        devices_per_user=args.devices_per_user,
        time_limit=args.time_limit,
        postgres_url=args.postgres_url,
        python=args.python,
        json_path=args.json_path,
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
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one run; dropped on the way out. Yields its URL."""
    import psycopg

    name = f"fdpush_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
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
    """``fdpush serve`` in a subprocess on loopback, with the benchmark's configuration."""

    def __init__(self, python: str, database_url: str, workdir: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "service.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")},
            "FDPUSH_HOST": "127.0.0.1",
            "FDPUSH_PORT": str(self.port),
            "FDPUSH_DATABASE_URL": database_url,
            "FDPUSH_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "FDPUSH_AUTH_MODE": "dev",
            "FDPUSH_AUTH_DEV_SECRET": DEV_SECRET,
            "FDPUSH_RATE_LIMIT": "0",
            "FDPUSH_GATEWAY_ALLOWLIST": GATEWAY_HOST,
            "FDPUSH_CHANNELS": ",".join(f"{ident}={status}" for ident, status in CHANNELS),
            "FDPUSH_MAX_PUSHERS_PER_USER": str(MAX_PUSHERS_PER_USER),
        }
        self.command = [python, "-m", "fdpush", "serve", "--no-access-log"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
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
                raise ServiceError(f"fdpush serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.base_url + "/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval, not a wait for readiness
        raise ServiceError(f"fdpush serve was not ready within {STARTUP_DEADLINE_S:.0f} s")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the service process has used so far (Linux), else None."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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
    """One row of the results table."""

    backend: str
    scenario: str
    requests: int
    concurrency: int
    errors: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    service_cpu_percent: float | None
    bench_cpu_percent: float
    machine_cpu_percent: float | None
    error_samples: list[str]

    @classmethod
    def of(
        cls, backend: str, scenario: str, concurrency: int, phase: PhaseResult
    ) -> ScenarioFigures:
        latencies = sorted(phase.latencies)
        wall = phase.seconds or math.nan
        return cls(
            backend=backend,
            scenario=scenario,
            requests=phase.requests,
            concurrency=concurrency,
            errors=phase.errors,
            seconds=round(phase.seconds, 3),
            requests_per_second=round(phase.completed / wall, 1),
            p50_ms=round(percentile(latencies, 0.50) * 1000, 2),
            p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
            max_ms=round(latencies[-1] * 1000, 2) if latencies else math.nan,
            service_cpu_percent=(
                None if phase.service_cpu_s is None else round(phase.service_cpu_s / wall * 100)
            ),
            bench_cpu_percent=round(phase.bench_cpu_s / wall * 100),
            machine_cpu_percent=(
                None if phase.machine_cpu_s is None else round(phase.machine_cpu_s / wall * 100)
            ),
            error_samples=phase.error_samples,
        )


async def measure_backend(
    backend: str, service: Service, options: Options
) -> list[ScenarioFigures]:
    """Register the devices, then warm up and measure each scenario on a running service."""
    workload = Workload(options.users, options.devices_per_user)
    # One client with one keep-alive connection per worker, `concurrency` connections in all.
    # Not one shared client: httpcore's pool scans all its connections several times per
    # request (O(n^2) in the pool size), which at 32 connections cost the load generator more
    # CPU than the service spent answering — on a small machine it measured itself.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=service.base_url, limits=limits, timeout=REQUEST_TIMEOUT_S
                )
            )
            for _ in range(options.concurrency)
        ]

        def phase(calls: list[Call], check: Check) -> Coroutine[Any, Any, PhaseResult]:
            return run_phase(clients, service, calls, check, time_limit=options.time_limit)

        for name, calls, check in (
            ("registering the devices", workload.register_devices(), expect_empty_object),
            ("choosing channels", workload.choose_channels(), expect_empty_object),
        ):
            setup = await phase(calls, check)
            if setup.errors:
                raise ServiceError(f"{name} failed: {setup.error_samples}")

        figures = []
        scenarios = (
            (
                SCENARIO_SET,
                workload.pushers_set(options.warmup),
                workload.pushers_set(options.requests),
                expect_empty_object,
            ),
            (
                SCENARIO_GET,
                workload.get_channels(options.warmup),
                workload.get_channels(options.requests, offset=options.warmup),
                expect_catalog,
            ),
        )
        for scenario, warmup, measured, check in scenarios:
            if scenario not in options.scenarios:
                continue
            warm = await phase(warmup, check)
            result = await phase(measured, check)
            result.errors += warm.errors  # a failing warm-up fails the run, too
            result.error_samples[:0] = [f"warm-up: {s}" for s in warm.error_samples]
            figures.append(ScenarioFigures.of(backend, scenario, options.concurrency, result))
        return figures


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
        with postgres_database(options.postgres_url) as url:
            yield url


def run_backend(backend: str, options: Options) -> list[ScenarioFigures]:
    """Start a service on a fresh database of ``backend``, measure it, clean up."""
    loop_factory, _ = _event_loop_factory()
    with (
        tempfile.TemporaryDirectory(prefix=f"fdpush-bench-{backend}-") as tmp,
        database_for(backend, options, Path(tmp)) as database_url,
    ):
        service = Service(options.python, database_url, Path(tmp))
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                return runner.run(measure_backend(backend, service, options))
        except ServiceError as exc:
            raise ServiceError(f"{exc}\n--- service log ---\n{service.log_tail()}") from None
        finally:
            service.stop()


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def format_table(figures: list[ScenarioFigures]) -> str:
    header = (
        "backend",
        "scenario",
        "requests",
        "concurrency",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "svc CPU",
        "bench CPU",
        "all CPU",
    )
    rows = [
        (
            f.backend,
            f.scenario,
            str(f.requests),
            str(f.concurrency),
            str(f.errors),
            f"{f.requests_per_second:.0f}",
            _ms(f.p50_ms),
            _ms(f.p99_ms),
            _ms(f.max_ms),
            _cpu(f.service_cpu_percent),
            _cpu(f.bench_cpu_percent),
            _cpu(f.machine_cpu_percent),
        )
        for f in figures
    ]
    return text_table(header, rows, left_columns=2)


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
    _, loop_name = _event_loop_factory()
    service = shlex.join([options.python, "-m", "fdpush", "serve", "--no-access-log"])
    busy = machine.get("busy_percent_before")
    return [
        "fdpush API benchmark",
        f"  command:  {command}",
        f"  machine:  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}, {machine['platform']}",
        f"  python:   {machine['python']}, fdpush {machine['fdpush']}, httpx {machine['httpx']}",
        f"  service:  {service} (one process on 127.0.0.1, dev auth, no rate limit)",
        f"  database: {'; '.join(databases) or '-'}",
        f"  load:     {options.requests} measured requests per scenario after {options.warmup} "
        f"warm-up, concurrency {options.concurrency}, {options.users} users x "
        f"{options.devices_per_user} devices",
        f"            httpx HTTP/1.1 keep-alive, one connection per worker, {loop_name}, "
        "on the same machine",
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
    backends: tuple[str, ...], postgres_url: str, machine: dict[str, Any]
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
            databases.append(f"PostgreSQL {server} (a fresh database on {shown_url})")
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
    databases, skipped = describe_databases(options.backends, options.postgres_url, machine)
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
            "event_loop": _event_loop_factory()[1],
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
