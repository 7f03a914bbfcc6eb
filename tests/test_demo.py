"""``fdpush demo --once``: the whole chain in one command, asserted on its outcome.

The demo checks itself (its exit status); this test does not take its word for it: from the
report it recomputes, with the concept's rule (a device's own choice, else the catalog default;
only ``enabled`` subscribes), which device must have received which payload, and compares
that with what each simulated app decrypted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fdpush.demo import DemoDevice, DemoEvent, DemoOutcome, scenario

DEMO_DEADLINE_SECONDS = 120


def test_demo_once_delivers_exactly_what_each_device_chose(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    # Settings of the user's own deployment must not leak into the demo.
    env["FDPUSH_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/never"
    env["FDPUSH_CHANNELS"] = "something.else"
    env["COLUMNS"] = "120"
    run = subprocess.run(
        [sys.executable, "-m", "fdpush", "demo", "--once", "--report", str(report_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEMO_DEADLINE_SECONDS,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["problems"] == []

    catalog = report["catalog"]
    expected_total = 0
    for device in report["devices"]:
        expected = [
            event["payload"]
            for event in report["events"]
            if event["user"] == device["user"]
            and device["choices"].get(event["channel"], catalog[event["channel"]]) == "enabled"
        ]
        expected_total += len(expected)
        received = report["received"][device["label"]]
        assert sorted(map(json.dumps, received)) == sorted(map(json.dumps, expected)), device
    # The scenario exercises every case: both platforms, a device that gets nothing, a device
    # that gets several, an explicit choice overriding each kind of default.
    assert {d["app_id"].rsplit(".", 1)[1] for d in report["devices"]} == {"apns", "firebase"}
    assert any(not r for r in report["received"].values())
    assert any(len(r) > 1 for r in report["received"].values())
    assert expected_total == 5
    shown = " ".join(run.stdout.split())  # the console wraps long lines
    assert "5 notifications sealed by the service" in shown
    assert "Ben's phone correctly got nothing" in shown
    assert "✔ decrypted" in shown and "✘" not in shown
    assert list(tmp_path.iterdir()) == [report_path]  # the demo cleans up after itself


def test_the_demos_own_check_fails_on_a_wrong_outcome() -> None:
    """The exit status is worth something: a missing, an unwanted and a duplicated push each
    make the check fail."""
    devices, events = scenario()

    def outcome_with(received: dict[str, list[dict[str, str]]]) -> DemoOutcome:
        from fdpush.demo import _check

        outcome = DemoOutcome(devices, events, received=received)
        _check(outcome)
        return outcome

    def right() -> dict[str, list[dict[str, str]]]:
        return {d.label: [e.payload for e in events if _wants(d, e)] for d in devices}

    assert outcome_with(right()).ok
    missing = right()
    missing[devices[0].label].pop()
    assert not outcome_with(missing).ok
    unwanted = right()
    unwanted[devices[3].label].append(events[3].payload)
    assert not outcome_with(unwanted).ok
    doubled = right()
    doubled[devices[1].label].append(doubled[devices[1].label][0])
    assert not outcome_with(doubled).ok


def _wants(device: DemoDevice, event: DemoEvent) -> bool:
    from fdpush.demo import subscribed

    return event.user == device.user and subscribed(device, event.channel)


def test_the_demo_fits_80_columns_its_commands_work_and_sigterm_cleans_up(tmp_path: Path) -> None:
    """Run as a person would in a small terminal: nothing wider than 80 columns, no channel id
    cut, the printed commands work as printed, and SIGTERM deletes the demo's folder (with its
    private keys) as Ctrl-C does."""
    # A short TMPDIR (as on a laptop's /tmp): the printed folder is part of the lines measured.
    temp = Path(tempfile.mkdtemp(prefix="fdd-"))
    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    env.update(COLUMNS="80", TMPDIR=str(temp))
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "fdpush", "demo"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DEMO_DEADLINE_SECONDS
        while "stops it and deletes" not in output.read_text():
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        shown = output.read_text()
        lines = shown.splitlines()
        assert max(len(line) for line in lines) <= 80, max(lines, key=len)
        table = shown.split("What each device received", 1)[1].split("Try it by hand", 1)[0]
        assert "…" not in table  # nothing cut off
        for channel in ("erp.task.activate", "erp.communication.new", "erp.chargeitem.create"):
            assert channel in table
        assert "✔ decrypted" in table
        assert len(list(temp.iterdir())) == 1  # the demo's folder, while it runs

        commands = shown.split("Try it by hand:", 1)[1].split("Ctrl-C", 1)[0]
        script = f"set -eu\n{commands}"
        ran = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        assert ran.returncode == 0, ran.stderr
        answers = [json.loads(line) for line in ran.stdout.replace("}{", "}\n{").splitlines()]
        pushers, channels, history, event, inbox = answers
        assert {p["device_display_name"] for p in pushers["pushers"]} == {
            "Anna's iPhone",
            "Anna's tablet",
        }
        assert {c["id"]: c["status"] for c in channels["channels"]}["erp.communication.new"] == (
            "enabled"
        )
        assert history["messages"]  # what the demo sent to that iPhone
        assert event["notifications"] == 1  # only the iPhone has the channel enabled
        assert inbox["app_id"] == "de.gematik.erezept.apns"
        assert inbox["notifications"]
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        left = list(temp.iterdir())
        shutil.rmtree(temp)
    assert left == []
