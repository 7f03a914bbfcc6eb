"""Benchmark of the production Push Gateway against its floor: a minimal direct client.

What it measures
    Notifications per second delivered to the mock APNs and mock FCM (``fdpush.testing``) on
    this machine, two ways, with the same load:

    - ``direct client (floor)``: a minimal client sends each notification straight to the mock
      providers over HTTP/2 (the same rendered APNs/FCM messages, one provider JWT and one FCM
      access token made beforehand, one connection per provider, at most ``--streams``
      requests in flight per provider). It checks each answer is 200. This is what pushing costs
      here with no gateway at all.
    - ``production gateway``: ``fdpush gateway --config`` (production mode, its own process)
      receives ``notifyEncrypted/batch`` requests of ``--batch`` items over mutual TLS and
      forwards them to the same mocks (``streams_per_app`` = ``--streams``). Each answer must
      be 200 with every item ``success``.

    Each batch is half APNs, half FCM, with fresh pushkeys and 1404-character ciphertexts.
    ``--concurrency`` batches are in flight at a time. Latency is per batch (request to answer,
    or for the floor: first push sent to last push answered). Memory is the peak resident size
    (VmHWM) of the gateway process and of the mocks' process; CPU is each process's use during
    the measured phase in percent of one core (``load``: this process, the load generator or
    the direct client).

    The two paths run alternately for ``--rounds`` rounds against the same mocks and the same
    gateway process; the best round of each path counts (the one least disturbed by anything
    else on the machine), every round is in the JSON.

    The ratio is the gateway's time per notification over the floor's (1.00: no overhead; the
    goal is at most 1.30). Everything runs on one machine: the mocks in one process, the gateway
    in another, the load in this one, so the gateway's CPU comes out of the same cores the
    floor had to itself — the ratio includes that.

Usage
    .venv/bin/python bench/bench_gateway.py                   # 3 rounds of 100 batches of 100
    .venv/bin/python bench/bench_gateway.py --quick           # 20 batches
    .venv/bin/python bench/bench_gateway.py --batches 300 --json out.json

Exit status: 0 every notification delivered as expected, 1 errors, 3 setup failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from bench_api import (
    announce,
    machine_busy_percent,
    machine_info,
    percentile,
    text_table,
)
from fdpush.gateway import TestPki, make_test_pki
from fdpush.gateway.render import render
from fdpush.gateway.runner import READY_LINE, stop_process
from fdpush.gateway_api import EncryptedBatchItem, EncryptedNotification

APNS_APP = "de.gematik.bench.apns"
APNS_TOPIC = "de.gematik.bench"
FCM_PROJECT = "bench-project"
FCM_APP = f"{FCM_PROJECT}.bench.firebase"
TEAM_ID = "BENCHTEAM1"
KEY_ID = "BENCHKEY01"
STARTUP_DEADLINE = 30.0
TIME_LIMIT = 600.0


@dataclass(frozen=True)
class Options:
    batches: int
    warmup: int
    batch: int
    concurrency: int
    streams: int
    rounds: int
    json_path: Path


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, help="measured batches (default 100; quick 20)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured batches first")
    parser.add_argument("--batch", type=int, default=100, help="items per batch (default 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument(
        "--streams", type=int, default=100, help="requests in flight per provider app"
    )
    parser.add_argument(
        "--json",
        dest="json_path",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "gateway.json",
        help="where to write the figures (default bench/results/gateway.json)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating floor/gateway rounds; best counts"
    )
    parser.add_argument("--quick", action="store_true", help="a small run: 20 batches")
    parser.add_argument("--serve-mocks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mocks is not None:
        serve_mocks(args.serve_mocks)
        sys.exit(0)
    batches = args.batches if args.batches is not None else (20 if args.quick else 100)
    if not (1 <= batches <= 10_000 and 2 <= args.batch <= 100 and 1 <= args.concurrency <= 64):
        parser.error("--batches 1..10000, --batch 2..100, --concurrency 1..64")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds 1..20")
    return Options(
        batches,
        args.warmup,
        args.batch,
        args.concurrency,
        args.streams,
        args.rounds,
        args.json_path,
    )


# --- the mocks, in a process of their own ------------------------------------------------------


def serve_mocks(directory: Path) -> None:
    """Run both mocks until stdin closes; describe them in ``directory/mocks.json``."""
    from fdpush.testing import MockApns, MockFcm, make_apns_key

    pki = make_test_pki(directory / "pki")
    key = make_apns_key(directory, team_id=TEAM_ID, key_id=KEY_ID)
    with MockApns(pki) as apns, MockFcm(pki) as fcm:
        apns.add_key(key, topics=[APNS_TOPIC])
        account = fcm.add_service_account(directory, FCM_PROJECT)
        description = {"apns": apns.url, "fcm": fcm.url, "key": str(key.path)}
        description["account"] = str(account)
        (directory / "mocks.json.tmp").write_text(json.dumps(description))
        (directory / "mocks.json.tmp").rename(directory / "mocks.json")
        sys.stdin.read()  # until the benchmark closes our stdin
        print(json.dumps({"apns_received": len(apns.received), "fcm_received": len(fcm.received)}))


@dataclass(frozen=True)
class Mocks:
    process: subprocess.Popen[bytes]
    pki: TestPki
    apns: str
    fcm: str
    key: Path
    account: Path


def start_mocks(directory: Path) -> Mocks:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-mocks", str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    deadline = time.monotonic() + STARTUP_DEADLINE
    described = directory / "mocks.json"
    while not described.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the mock providers did not start")
        time.sleep(0.02)
    info = json.loads(described.read_text())
    pki = make_test_pki_paths(directory / "pki")
    return Mocks(process, pki, info["apns"], info["fcm"], Path(info["key"]), Path(info["account"]))


def make_test_pki_paths(directory: Path) -> TestPki:
    return TestPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) the process has used so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# --- the load ----------------------------------------------------------------------------------


def encrypted_notification(app_id: str, pushkey: str) -> EncryptedNotification:
    return {
        "ciphertext": base64.b64encode(os.urandom(1052)).decode(),
        "time_message_encrypted": "2026-11",
        "key_identifier": str(uuid.uuid4()),
        "identifier": str(uuid.uuid4()),
        "prio": "high",
        "device": {"app_id": app_id, "pushkey": pushkey},
    }


def make_batches(count: int, size: int) -> list[list[EncryptedBatchItem]]:
    batches = []
    for _ in range(count):
        items: list[EncryptedBatchItem] = []
        for i in range(size):
            if i % 2 == 0:
                note = encrypted_notification(APNS_APP, secrets.token_hex(32))
            else:
                note = encrypted_notification(FCM_APP, secrets.token_urlsafe(114))
            items.append({"id": f"n{i}", "notification": note})
        batches.append(items)
    return batches


@dataclass
class Phase:
    notifications: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] | None = None
    samples: list[str] | None = None
    cpu: dict[str, float] | None = None  # CPU seconds during the phase, by process

    def error(self, text: str) -> None:
        self.errors += 1
        self.samples = (self.samples or []) + ([text] if len(self.samples or []) < 5 else [])


async def run_batches(
    send: Any,
    batches: list[list[EncryptedBatchItem]],
    concurrency: int,
    processes: dict[str, int] | None = None,
) -> Phase:
    """``send(items) -> list of problems``, ``concurrency`` batches at a time; the CPU time of
    ``processes`` (name → pid) and of this one is measured over the phase."""
    phase = Phase(latencies=[])
    watched = dict(processes or {})
    before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    bench_before = time.process_time()
    queue = iter(batches)

    async def worker() -> None:
        for items in queue:
            started = time.perf_counter()
            problems = await send(items)
            assert phase.latencies is not None
            phase.latencies.append(time.perf_counter() - started)
            phase.notifications += len(items)
            for problem in problems:
                phase.error(problem)

    started = time.perf_counter()
    async with asyncio.timeout(TIME_LIMIT):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    phase.cpu = {"load": time.process_time() - bench_before}
    for name, pid in watched.items():
        start, end = before[name], cpu_seconds(pid)
        if start is not None and end is not None:
            phase.cpu[name] = end - start
    return phase


class DirectClient:
    """The floor: the same messages straight to the mock providers, nothing else."""

    def __init__(self, mocks: Mocks, streams: int) -> None:
        context = mocks.pki.client_ssl_context(with_client_cert=False)
        pool = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.apns = httpx.AsyncClient(
            base_url=mocks.apns, http1=False, http2=True, verify=context, limits=pool
        )
        self.fcm = httpx.AsyncClient(
            base_url=mocks.fcm, http1=False, http2=True, verify=context, limits=pool
        )
        self.streams = {"apns": asyncio.Semaphore(streams), "fcm": asyncio.Semaphore(streams)}
        self.mocks = mocks
        self.apns_token = jwt.encode(
            {"iss": TEAM_ID, "iat": int(time.time())},
            mocks.key.read_bytes(),
            algorithm="ES256",
            headers={"kid": KEY_ID},
        )
        self.fcm_token = ""

    async def start(self) -> None:
        account = json.loads(self.mocks.account.read_text())
        now = int(time.time())
        claims = {
            "iss": account["client_email"],
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "aud": account["token_uri"],
            "iat": now,
            "exp": now + 3600,
        }
        assertion = jwt.encode(claims, account["private_key"], algorithm="RS256")
        grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
        response = await self.fcm.post(
            account["token_uri"], data={"grant_type": grant, "assertion": assertion}
        )
        self.fcm_token = response.json()["access_token"]

    async def push(self, note: dict[str, Any]) -> str | None:
        device = note["device"]
        fields = {k: note[k] for k in ("ciphertext", "time_message_encrypted", "key_identifier")}
        fields["identifier"] = note["identifier"]
        message = render(device["app_id"], device["pushkey"], note["prio"], fields, None)
        assert message is not None
        if device["app_id"] == APNS_APP:
            headers = {**message["headers"], "authorization": f"bearer {self.apns_token}"}
            async with self.streams["apns"]:
                response = await self.apns.post(
                    f"/3/device/{device['pushkey']}",
                    content=orjson.dumps(message["payload"]),
                    headers=headers,
                )
        else:
            async with self.streams["fcm"]:
                response = await self.fcm.post(
                    f"/v1/projects/{FCM_PROJECT}/messages:send",
                    content=orjson.dumps(message),
                    headers={"authorization": f"Bearer {self.fcm_token}"},
                )
        return None if response.status_code == 200 else f"{response.status_code}"

    async def send(self, items: list[dict[str, Any]]) -> list[str]:
        answers = await asyncio.gather(*(self.push(item["notification"]) for item in items))
        return [a for a in answers if a is not None]

    async def aclose(self) -> None:
        await self.apns.aclose()
        await self.fcm.aclose()


def gateway_config(directory: Path, mocks: Mocks, streams: int) -> Path:
    pki = mocks.pki
    path = directory / "gateway.toml"
    path.write_text(
        f"""mode = "production"
log_level = "warning"
[listen]
host = "127.0.0.1"
port = 0
cert = "{pki.server_cert}"
key = "{pki.server_key}"
client_ca = "{pki.ca_cert}"
[delivery]
answer_within_seconds = 30
[apns]
url = "{mocks.apns}"
ca_file = "{pki.ca_cert}"
streams_per_app = {streams}
[fcm]
url = "{mocks.fcm}"
ca_file = "{pki.ca_cert}"
streams_per_app = {streams}
[[apns_apps]]
app_id = "{APNS_APP}"
key_file = "{mocks.key}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
[[fcm_apps]]
app_id = "{FCM_APP}"
service_account = "{mocks.account}"
"""
    )
    return path


def start_gateway(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fdpush", "gateway", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        match = READY_LINE.search(log.read_text())
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    stop_process(process)
    raise RuntimeError(f"the gateway did not start:\n{log.read_text()[-2000:]}")


class GatewayLoad:
    """Batches to the production gateway, one keep-alive connection per batch in flight."""

    def __init__(self, url: str, pki: TestPki, concurrency: int) -> None:
        context = pki.client_ssl_context()
        self.client = httpx.AsyncClient(
            base_url=url,
            verify=context,
            timeout=60,
            limits=httpx.Limits(max_connections=concurrency),
        )

    async def send(self, items: list[dict[str, Any]]) -> list[str]:
        response = await self.client.post(
            "/push/v1/notifyEncrypted/batch", content=orjson.dumps({"notifications": items})
        )
        if response.status_code != 200:
            return [f"HTTP {response.status_code}: {response.text[:100]}"]
        summary = response.json()["summary"]
        if summary["successful"] != len(items):
            failed = [r for r in response.json()["results"] if r["status"] != "success"]
            return [f"{r['status']}: {r.get('error')}" for r in failed]
        return []

    async def aclose(self) -> None:
        await self.client.aclose()


# --- running and reporting ---------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    path: str
    notifications: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    gateway_peak_mb: float | None
    mocks_peak_mb: float | None
    cpu_percent: dict[str, float]  # of one core, during the measured phase, by process


def figures_of(name: str, phase: Phase, gateway_pid: int | None, mocks_pid: int) -> Figures:
    latencies = sorted(phase.latencies or [])
    return Figures(
        path=name,
        notifications=phase.notifications,
        errors=phase.errors,
        seconds=phase.seconds,
        per_second=phase.notifications / phase.seconds if phase.seconds else 0.0,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        gateway_peak_mb=peak_rss_mb(gateway_pid) if gateway_pid is not None else None,
        mocks_peak_mb=peak_rss_mb(mocks_pid),
        cpu_percent={
            name: seconds / phase.seconds * 100 for name, seconds in (phase.cpu or {}).items()
        },
    )


FLOOR, GATEWAY = "direct client (floor)", "production gateway"


async def measure(
    options: Options, mocks: Mocks, workdir: Path
) -> tuple[list[Figures], list[Figures]]:
    """Alternate floor and gateway phases for ``options.rounds`` rounds; the best round of each
    path (highest rate: the least disturbed by anything else on the machine), and all rounds."""
    direct = DirectClient(mocks, options.streams)
    await direct.start()
    config = gateway_config(workdir, mocks, options.streams)
    process, url = start_gateway(config, workdir / "gw.log")
    load = GatewayLoad(url, mocks.pki, options.concurrency)
    paths = (
        (FLOOR, direct.send, {"mocks": mocks.process.pid}, None),
        (GATEWAY, load.send, {"gateway": process.pid, "mocks": mocks.process.pid}, process.pid),
    )
    rounds: list[Figures] = []
    try:
        for _, send, _, _ in paths:
            await run_batches(
                send, make_batches(options.warmup, options.batch), options.concurrency
            )
        for _ in range(options.rounds):
            for name, send, watched, gateway_pid in paths:
                batches = make_batches(options.batches, options.batch)
                phase = await run_batches(send, batches, options.concurrency, watched)
                for sample in phase.samples or []:
                    print(f"  error ({name}): {sample}", file=sys.stderr)
                rounds.append(figures_of(name, phase, gateway_pid, mocks.process.pid))
    finally:
        await load.aclose()
        await direct.aclose()
        stop_process(process)
    best = []
    for name, *_ in paths:
        mine = [f for f in rounds if f.path == name]
        top = max(mine, key=lambda f: f.per_second)
        best.append(replace(top, errors=sum(f.errors for f in mine)))
    return best, rounds


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["bench_gateway.py", *argv])
    machine = machine_info()
    machine["busy_percent_before"] = machine_busy_percent()
    header = [
        "fdpush gateway benchmark: production gateway vs. a minimal direct client (the floor)",
        f"  command:  {command}",
        f"  machine:  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}",
        f"  python:   {machine['python']}, fdpush {machine['fdpush']}, httpx {machine['httpx']}",
        f"  load:     {options.batches} measured batches of {options.batch} (half APNs, half FCM) "
        f"after {options.warmup} warm-up, {options.concurrency} batches in flight, "
        f"{options.streams} streams per provider app",
        f"            {options.rounds} rounds, floor and gateway alternating; the best round of "
        "each is shown (errors: all rounds)",
        "  mocks:    fdpush.testing MockApns + MockFcm in one process (HTTP/2, TLS)",
        "  gateway:  fdpush gateway --config (production mode), its own process, mTLS in",
    ]
    announce(header, machine, {})
    with tempfile.TemporaryDirectory(prefix="fdpush-bench-gateway-") as scratch:
        workdir = Path(scratch)
        try:
            mocks = start_mocks(workdir)
        except RuntimeError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 3
        try:
            results, rounds = asyncio.run(measure(options, mocks, workdir))
        except RuntimeError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 3
        finally:
            assert mocks.process.stdin is not None
            mocks.process.stdin.close()
            mocks.process.wait(30)
    floor, gateway = results
    ratio = floor.per_second / gateway.per_second if gateway.per_second else float("inf")
    rows = [
        (
            f.path,
            str(f.notifications),
            str(f.errors),
            f"{f.seconds:.2f}",
            f"{f.per_second:.0f}",
            f"{f.p50_ms:.1f}",
            f"{f.p99_ms:.1f}",
            _mb(f.gateway_peak_mb),
            _mb(f.mocks_peak_mb),
            _cpu(f.cpu_percent.get("gateway")),
            _cpu(f.cpu_percent.get("mocks")),
            _cpu(f.cpu_percent.get("load")),
        )
        for f in results
    ]
    print()
    print(
        text_table(
            (
                "path",
                "notifications",
                "errors",
                "seconds",
                "notif/s",
                "batch p50 ms",
                "batch p99 ms",
                "gateway MB",
                "mocks MB",
                "gateway CPU",
                "mocks CPU",
                "load CPU",
            ),
            rows,
            left_columns=1,
        )
    )
    verdict = "within" if ratio <= 1.30 else "OVER"
    print(
        f"\nratio: the gateway takes {ratio:.2f}x the floor's time per notification "
        f"({(ratio - 1) * 100:+.0f} %; goal at most +30 %: {verdict})"
    )
    document = {
        "command": command,
        "machine": machine,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "results": [asdict(f) for f in results],
        "rounds": [asdict(f) for f in rounds],
        "ratio": ratio,
    }
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(document, indent=2))
    print(f"figures written to {options.json_path}")
    errors = sum(f.errors for f in results)
    if errors:
        print(f"FAILED: {errors} notification(s) not delivered as expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
