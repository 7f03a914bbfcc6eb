"""``fdpush demo``: the whole chain on one laptop, in one command, with nothing to configure.

It starts the service (SQLite in a temporary directory, dev authentication, a throwaway CA)
and the development Push Gateway with mutual TLS, plays four app installations of two insured
people (iOS and Android, different channel choices) through the client kit, lets the
Fachdienst emit a series of events through the internal API, and shows which device received
which notification — opened by that device's own keyring from the APNs or FCM push the gateway
recorded — and which devices correctly got nothing. Then it prints curl commands to try the
running service by hand (or, with ``--once``, stops). The exit status says whether every
device got exactly what its choices promise.
"""

from __future__ import annotations

import abc
import base64
import os
import secrets
import shlex
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from fdpush.client import FachdienstClient, Keyring, KeyringError
from fdpush.config import Settings
from fdpush.gateway import DevGateway, GatewayThread, TestPki, make_test_pki
from fdpush.gateway.runner import bind_socket, serve_in_thread
from fdpush.logs import configure_logging
from fdpush.web.auth import issue_dev_token

__all__ = ["DemoDevice", "DemoEvent", "DemoOutcome", "run_demo"]

# A slice of the e-prescription service's catalog, one channel of each default status.
CATALOG = (
    "erp.task.activate=enabled,erp.task.close,erp.communication.new,erp.chargeitem.create=disabled"
)
ANNA, BEN = "X110411675", "X110422347"  # KVNR-shaped user ids
APNS_APP, FCM_APP = "de.gematik.erezept.apns", "de.gematik.erezept.firebase"
SETTLE_DEADLINE_SECONDS = 30.0


@dataclass(frozen=True)
class DemoDevice:
    """One simulated app installation: whose, which app, and the channel choices it makes."""

    label: str
    user: str
    app_id: str
    pushkey: str
    choices: dict[str, str] = field(default_factory=dict)

    @property
    def platform(self) -> str:
        return "iOS (APNs)" if self.app_id.endswith(".apns") else "Android (FCM)"


@dataclass(frozen=True)
class DemoEvent:
    """Something the Fachdienst's business logic says happened for a user."""

    user: str
    channel: str
    identifier: str
    what: str  # for the table

    @property
    def payload(self) -> dict[str, str]:
        # The e-prescription service's plaintext payload.
        return {"ChannelId": self.channel, "Identifier": self.identifier, "IdentifierType": "Task"}


def _apns_token() -> str:
    return secrets.token_hex(32)


def _fcm_token() -> str:  # FCM tokens carry ':' and, like real pushkeys, '/', '+', '='
    return f"c{secrets.token_hex(5)}:APA91b{base64.b64encode(os.urandom(30)).decode()}"


def scenario() -> tuple[list[DemoDevice], list[DemoEvent]]:
    """The four devices and six events the demo plays (fresh pushkeys each run)."""
    devices = [
        DemoDevice(
            "Anna's iPhone", ANNA, APNS_APP, _apns_token(), {"erp.communication.new": "enabled"}
        ),
        DemoDevice(
            "Anna's tablet",
            ANNA,
            FCM_APP,
            _fcm_token(),
            {"erp.task.activate": "disabled", "erp.task.close": "enabled"},
        ),
        DemoDevice(
            "Ben's iPhone", BEN, APNS_APP, _apns_token(), {"erp.chargeitem.create": "enabled"}
        ),
        DemoDevice(
            "Ben's phone",
            BEN,
            FCM_APP,
            _fcm_token(),
            {"erp.task.activate": "not_set", "erp.communication.new": "disabled"},
        ),
    ]
    events = [
        DemoEvent(ANNA, "erp.task.activate", "160.000.100.000.001.05", "prescription ready"),
        DemoEvent(
            ANNA, "erp.communication.new", "160.000.100.000.001.05/msg-1", "pharmacy message"
        ),
        DemoEvent(ANNA, "erp.task.close", "160.000.100.000.001.05", "medicine dispensed"),
        DemoEvent(BEN, "erp.task.activate", "160.000.200.000.002.01", "prescription ready"),
        DemoEvent(BEN, "erp.chargeitem.create", "200.000.000.000.003.07", "new charge item"),
        DemoEvent(BEN, "erp.communication.new", "160.000.200.000.002.01/msg-1", "pharmacy message"),
    ]
    return devices, events


def catalog_defaults() -> dict[str, str]:
    entries = (entry.partition("=") for entry in CATALOG.split(","))
    return {ident: status or "not_set" for ident, _, status in entries}


def subscribed(device: DemoDevice, channel: str) -> bool:
    """The concept's rule: the device's own choice, else the catalog default; only
    ``enabled`` subscribes (``not_set`` counts as disabled)."""
    return device.choices.get(channel, catalog_defaults()[channel]) == "enabled"


@dataclass
class DemoOutcome:
    """What happened: per device the payloads it opened, and everything that went wrong."""

    devices: list[DemoDevice]
    events: list[DemoEvent]
    event_ids: list[str] = field(default_factory=list)
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by device label
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> dict[str, Any]:
        """The outcome as JSON-able data (``--report``); no keys, no secrets."""
        return {
            "ok": self.ok,
            "catalog": catalog_defaults(),
            "devices": [asdict(d) for d in self.devices],
            "events": [
                {**asdict(e), "event_id": i, "payload": e.payload}
                for e, i in zip(self.events, self.event_ids, strict=False)
            ],
            "received": self.received,
            "problems": self.problems,
        }


# --- running the two servers -------------------------------------------------------------------


class _Service:
    """``fdpush serve``'s app in a thread of this process, on a loopback port."""

    def __init__(self, settings: Settings, port: int) -> None:
        import uvicorn

        from fdpush.web.app import create_app

        self._socket = bind_socket("127.0.0.1", port)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            create_app(settings),
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        try:
            self._thread = serve_in_thread(self._server, self._socket)
        except RuntimeError:
            self._socket.close()
            raise

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()


@dataclass(frozen=True)
class _Chain:
    service: _Service
    gateway: _Gateway
    settings: Settings
    workdir: Path
    dev_secret: str
    internal_key: str

    def token(self, user: str) -> str:
        return issue_dev_token(self.dev_secret, user, ttl_seconds=3600)


class _Gateway(abc.ABC):
    """The gateway end of the chain: where pushers point, and what each app receives."""

    url: str
    push_url: str
    production: bool = False

    @abc.abstractmethod
    def pushes(self, device: DemoDevice) -> list[dict[str, Any]]:
        """The APNs payloads or FCM messages the device has received, oldest first."""

    @abc.abstractmethod
    def kill(self, device: DemoDevice) -> None:
        """The device's token is dead: the gateway reports it rejected from now on."""


class _DevelopmentGateway(_Gateway):
    """The development gateway: it records the push each app would get."""

    def __init__(self, running: GatewayThread) -> None:
        self.running = running
        self.url, self.push_url = running.url, running.push_url

    def pushes(self, device: DemoDevice) -> list[dict[str, Any]]:
        return [entry["push"] for entry in self.running.inbox(device.app_id, device.pushkey)]

    def kill(self, device: DemoDevice) -> None:
        self.running.gateway.reject(device.pushkey)  # reported once, as a provider would


class _ProductionGateway(_Gateway):
    """The production gateway in front of the mock APNs and mock FCM."""

    production = True

    def __init__(self, workdir: Path, pki: TestPki, stack: ExitStack) -> None:
        from fdpush.gateway.production import GatewayConfig, ProductionGatewayThread
        from fdpush.testing import MockApns, MockFcm, make_apns_key

        self.apns = stack.enter_context(MockApns(pki))
        self.fcm = stack.enter_context(MockFcm(pki))
        key = make_apns_key(workdir, team_id="DEMOTEAM01", key_id="DEMOKEY001")
        self.apns.add_key(key, topics=[APNS_APP.removesuffix(".apns")])
        account = self.fcm.add_service_account(workdir, FCM_APP.split(".", 1)[0])
        config = GatewayConfig.model_validate(
            {
                "listen": {
                    "host": "127.0.0.1",
                    "cert": pki.server_cert,
                    "key": pki.server_key,
                    "client_ca": pki.ca_cert,
                },
                "apns": {"url": self.apns.url, "ca_file": pki.ca_cert},
                "fcm": {"url": self.fcm.url, "ca_file": pki.ca_cert},
                "apns_apps": [
                    {
                        "app_id": APNS_APP,
                        "key_file": key.path,
                        "key_id": key.key_id,
                        "team_id": key.team_id,
                    }
                ],
                "fcm_apps": [{"app_id": FCM_APP, "service_account": account}],
            }
        )
        running = ProductionGatewayThread(config)
        stack.callback(running.stop)
        self.url, self.push_url = running.url, running.push_url

    def pushes(self, device: DemoDevice) -> list[dict[str, Any]]:
        if device.app_id == APNS_APP:
            return [push.payload for push in self.apns.accepted_for(device.pushkey)]
        return [message.message for message in self.fcm.accepted_for(device.pushkey)]

    def kill(self, device: DemoDevice) -> None:
        if device.app_id == APNS_APP:
            self.apns.kill(device.pushkey)
        else:
            self.fcm.kill(device.pushkey)


@contextmanager
def _running_chain(workdir: Path, port: int, production: bool) -> Iterator[_Chain]:
    pki = make_test_pki(workdir / "pki")
    with ExitStack() as stack:
        gateway: _Gateway
        if production:
            gateway = _ProductionGateway(workdir, pki, stack)
        else:
            running = GatewayThread(DevGateway(), pki=pki)
            stack.callback(running.stop)
            gateway = _DevelopmentGateway(running)
        dev_secret, internal_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        gateway_port = gateway.url.rsplit(":", 1)[1]
        values: dict[str, Any] = dict(
            database_url=f"sqlite:///{workdir / 'fdpush.db'}",
            master_key=base64.b64encode(os.urandom(32)).decode(),
            auth_mode="dev",
            auth_dev_secret=dev_secret,
            channels=CATALOG,
            gateway_allowlist=f"127.0.0.1:{gateway_port}",
            gateway_ca_file=pki.ca_cert,
            gateway_client_cert=pki.client_cert,
            gateway_client_key=pki.client_key,
            internal_api_key=internal_key,
            history_days=30,
            rate_limit="0",
        )
        # _env_prefix: the demo needs no configuration and takes none from FDPUSH_* variables.
        settings = Settings(_env_prefix="FDPUSH_DEMO_UNUSED_", _env_file=None, **values)
        service = _Service(settings, port)
        stack.callback(service.stop)
        yield _Chain(service, gateway, settings, workdir, dev_secret, internal_key)


# --- the play ----------------------------------------------------------------------------------


def _register(chain: _Chain, devices: list[DemoDevice]) -> dict[str, Keyring]:
    keyrings: dict[str, Keyring] = {}
    for device in devices:
        keyring = Keyring.create()
        with FachdienstClient(chain.service.url, token=chain.token(device.user)) as fd:
            fd.register_pusher(
                app_id=device.app_id,
                pushkey=device.pushkey,
                url=chain.gateway.push_url,
                app_display_name="E-Rezept",
                device_display_name=device.label,
                lang="de",
                keyring=keyring,
            )
            if device.choices:
                fd.set_channels(device.pushkey, device.choices)
        keyrings[device.label] = keyring
    return keyrings


def _emit_and_settle(
    chain: _Chain, events: list[DemoEvent], outcome: DemoOutcome, console: Console
) -> None:
    headers = {"Authorization": f"Bearer {chain.internal_key}"}
    with (
        httpx.Client(base_url=chain.service.url, headers=headers, timeout=10) as internal,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=False,
        ) as progress,
    ):
        emitting = progress.add_task("events emitted", total=len(events))
        expected = 0
        for event in events:
            answer = internal.post(
                "/internal/v1/events",
                json={
                    "user_id": event.user,
                    "channel": event.channel,
                    "payload": event.payload,
                    "identifier": event.identifier,
                },
            )
            answer.raise_for_status()
            outcome.event_ids.append(answer.json()["event_id"])
            expected += int(answer.json()["notifications"])
            progress.advance(emitting)
        delivering = progress.add_task("notifications at the gateway", total=expected)
        deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
        while True:
            counts = [
                internal.get(f"/internal/v1/events/{i}").json()["counts"] for i in outcome.event_ids
            ]
            progress.update(delivering, completed=sum(c["delivered"] for c in counts))
            if not any(c["pending"] for c in counts):
                break
            if time.monotonic() > deadline:
                outcome.problems.append(
                    f"notifications still pending after {SETTLE_DEADLINE_SECONDS:.0f}s"
                )
                break
            time.sleep(0.05)
    for event, event_id, c in zip(events, outcome.event_ids, counts, strict=True):
        if c["rejected"] or c["failed"]:
            outcome.problems.append(f"event {event_id} ({event.channel}): {c}")


def _read_inboxes(
    chain: _Chain, devices: list[DemoDevice], keyrings: dict[str, Keyring], outcome: DemoOutcome
) -> None:
    """Each app takes the pushes it received (from the development gateway's record, or from
    the mock provider) and opens them with its keyring."""
    for device in devices:
        opened: list[dict[str, Any]] = []
        for push in chain.gateway.pushes(device):
            try:
                opened.append(keyrings[device.label].open_push(push))
            except KeyringError as exc:
                outcome.problems.append(f"{device.label} could not open a push: {exc}")
        outcome.received[device.label] = opened


def _check(outcome: DemoOutcome) -> None:
    """Every subscribed device got each of its events exactly once, and nothing else."""
    for device in outcome.devices:
        got = [orjson.dumps(p, option=orjson.OPT_SORT_KEYS) for p in outcome.received[device.label]]
        for event in outcome.events:
            wanted = event.user == device.user and subscribed(device, event.channel)
            times = got.count(orjson.dumps(event.payload, option=orjson.OPT_SORT_KEYS))
            if times != int(wanted):
                outcome.problems.append(
                    f"{device.label}: '{event.what}' for {event.user} arrived {times} times, "
                    f"expected {int(wanted)}"
                )
        known = {orjson.dumps(e.payload, option=orjson.OPT_SORT_KEYS) for e in outcome.events}
        if any(payload not in known for payload in got):
            outcome.problems.append(f"{device.label}: received a payload no event sent")


def _dead_token(
    chain: _Chain, devices: list[DemoDevice], outcome: DemoOutcome, console: Console
) -> None:
    """A device's token dies at its provider: the next notification to it is rejected by the
    provider, reported by the gateway, and the service deletes that pusher."""
    victim = devices[1]  # Anna's tablet: subscribed to erp.task.close
    chain.gateway.kill(victim)
    headers = {"Authorization": f"Bearer {chain.internal_key}"}
    event = {
        "user_id": victim.user,
        "channel": "erp.task.close",
        "payload": {"ChannelId": "erp.task.close", "Identifier": "160.000.100.000.001.06"},
        "identifier": "160.000.100.000.001.06",
    }
    with httpx.Client(base_url=chain.service.url, headers=headers, timeout=10) as internal:
        event_id = internal.post("/internal/v1/events", json=event).json()["event_id"]
        deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
        counts = internal.get(f"/internal/v1/events/{event_id}").json()["counts"]
        while counts["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
            counts = internal.get(f"/internal/v1/events/{event_id}").json()["counts"]
    with FachdienstClient(chain.service.url, token=chain.token(victim.user)) as fd:
        remaining = [p.pushkey for p in fd.pushers()]
    if counts["rejected"] != 1:
        outcome.problems.append(f"{victim.label}'s dead token: event counts {counts}")
    elif victim.pushkey in remaining:
        outcome.problems.append(f"{victim.label}'s pusher was not deleted after its rejection")
    else:
        console.print(
            f"{victim.label}'s token died at its provider: the next notification was rejected "
            "by the provider, reported by the gateway, and the service deleted the pusher "
            "[green]✔[/green]"
        )


def _status_of(device: DemoDevice, channel: str) -> str:
    if channel in device.choices:
        return device.choices[channel]
    return f"{catalog_defaults()[channel]} (default)"


def _table(outcome: DemoOutcome) -> Table:
    table = Table(title="What each device received", title_justify="left", box=box.SIMPLE_HEAD)
    # A cut channel id or word is useless: columns wrap between words instead, and the widths
    # below fit 80 columns.
    table.add_column("device", min_width=max(len(d.label) for d in outcome.devices))
    longest_word = max(len(word) for e in outcome.events for word in e.what.split())
    table.add_column("event", min_width=longest_word)
    longest_channel = max(len(event.channel) for event in outcome.events)
    table.add_column("channel", no_wrap=True, min_width=longest_channel)
    table.add_column("state", max_width=len("(default)"))
    table.add_column("received", no_wrap=True, min_width=len("✔ decrypted"))
    for device in outcome.devices:
        opened = outcome.received.get(device.label, [])
        name = f"{device.label} [dim]{device.platform}[/dim]"
        for event in outcome.events:
            if event.user != device.user:
                continue
            arrived = event.payload in opened
            wanted = subscribed(device, event.channel)
            if wanted and arrived:
                result = "[green]✔ decrypted[/green]"
            elif not wanted and not arrived:
                result = "[dim]✔ nothing[/dim]"
            elif wanted:
                result = "[red]✘ missing[/red]"
            else:
                result = "[red]✘ unwanted[/red]"
            table.add_row(
                name, event.what, event.channel, _status_of(device, event.channel), result
            )
            name = ""
        table.add_section()
    return table


def _try_it(chain: _Chain, devices: list[DemoDevice]) -> str:
    """Commands to try the running chain by hand, each line at most 80 columns wide.

    The token, the internal key and an event body go into files of the demo's folder (deleted
    with it), so that the lines stay short and the secrets out of the terminal's scrollback.
    """
    anna = devices[0]
    folder = chain.workdir
    _write_private(folder / "token", chain.token(anna.user))
    _write_private(folder / "internal.key", chain.internal_key)
    event = {
        "user_id": anna.user,
        "channel": "erp.communication.new",
        "identifier": "by-hand",
        "payload": {"ChannelId": "erp.communication.new", "Identifier": "by-hand"},
    }
    _write_private(folder / "event.json", orjson.dumps(event).decode())
    q = shlex.quote
    # The production gateway keeps no inbox (the mock providers have what it forwarded).
    target = (
        "$GW/metrics"
        if chain.gateway.production
        else f"$GW/_dev/inbox?app_id={anna.app_id}&pushkey=$PK"
    )
    return "\n".join(
        [
            f"D={q(str(folder))}",
            f"URL={chain.service.url}  GW={chain.gateway.url}",
            f"# {anna.label}: its pushkey (URL-encoded), its user's token",
            f"PK={q(quote(anna.pushkey, safe=''))}",
            'TOKEN=$(cat "$D/token")  KEY=$(cat "$D/internal.key")',
            "",
            'curl -s -H "Authorization: Bearer $TOKEN" "$URL/push/v1/pushers"',
            'curl -s -H "Authorization: Bearer $TOKEN" "$URL/push/v1/channels/$PK"',
            'curl -s -H "Authorization: Bearer $TOKEN" "$URL/push/v1/history/device/$PK"',
            'curl -s -H "Authorization: Bearer $KEY" "$URL/internal/v1/events" \\',
            '  -d @"$D/event.json"',
            'curl -s --cacert "$D/pki/ca.pem" --cert "$D/pki/client.pem" \\',
            '  --key "$D/pki/client.key" \\',
            f'  "{target}"',
        ]
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def run_demo(
    *,
    once: bool,
    port: int = 0,
    report: Path | None = None,
    console: Console | None = None,
    production_gateway: bool = False,
) -> DemoOutcome:
    """Play the demo; with ``once`` stop afterwards, else serve until Ctrl-C.

    ``production_gateway``: the production gateway in front of the mock APNs and FCM instead
    of the development gateway, and one more act: a device's token dies at its provider.
    """
    console = console or Console()
    devices, events = scenario()
    outcome = DemoOutcome(devices, events)
    with ExitStack() as stack:
        _stop_like_ctrl_c(stack)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fdpush-demo-")))
        configure_logging("info", path=workdir / "service.log")
        console.print("[bold]fdpush demo[/bold]: a Fachdienst, a Push Gateway and four apps")
        with console.status("starting the service and the gateway (mutual TLS)…"):
            chain = stack.enter_context(_running_chain(workdir, port, production_gateway))
        console.print(f"  service  {chain.service.url}  (SQLite, dev authentication)")
        note = "production gateway, mTLS" if production_gateway else "client certificate required"
        console.print(f"  gateway  {chain.gateway.url}  ({note})")
        if production_gateway:
            assert isinstance(chain.gateway, _ProductionGateway)
            console.print(
                f"  mock APNs  {chain.gateway.apns.url}   mock FCM  {chain.gateway.fcm.url}"
            )
        console.print(f"  files    {workdir}  (deleted at the end)")
        keyrings = _register(chain, devices)
        console.print(f"  {len(devices)} apps registered, each with a fresh iss and its choices")
        _emit_and_settle(chain, events, outcome, console)
        _read_inboxes(chain, devices, keyrings, outcome)
        _check(outcome)
        console.print(_table(outcome))
        delivered = sum(len(v) for v in outcome.received.values())
        silent = [d.label for d in devices if not outcome.received[d.label]]
        console.print(
            f"{delivered} notifications sealed by the service, carried by the gateway and "
            "opened by the app they were for"
            + (f"; {', '.join(silent)} correctly got nothing" if silent else "")
            + "."
        )
        if production_gateway:
            _dead_token(chain, devices, outcome, console)
        for problem in outcome.problems:
            console.print(f"[red]problem:[/red] {problem}")
        if report is not None:
            report.write_bytes(orjson.dumps(outcome.report(), option=orjson.OPT_INDENT_2))
        if not once:
            console.print("\nThe service keeps running. Try it by hand:\n")
            console.print(_try_it(chain, devices), markup=False, highlight=False, soft_wrap=True)
            console.print("\nCtrl-C (or SIGTERM) stops it and deletes everything it made.")
            _wait_for_interrupt()
    return outcome


def _stop_like_ctrl_c(stack: ExitStack) -> None:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: its folder (with private keys) is deleted.

    Only in the main thread (where Python runs signal handlers); the previous handlers come back
    when the demo ends.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        stack.callback(signal.signal, signum, signal.signal(signum, interrupt))


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
