"""The README's walk-through, run as it stands against what ``./dev run`` starts.

``./dev run`` is started for real (the service and the development gateway, with a fresh
development folder and free ports); the README's ``sh`` blocks of the walk-through then run
one after the other in one bash, with only the folder, the ports and the virtualenv swapped
in. After the event block the test waits for the delivery (a reader takes longer than that to
read the output) and looks at the gateway and the history again. What the blocks print is
checked against what the README says they print.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## A walk through the API with curl"
DONE = "__readme_block_done__"

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None,
    reason="the walk-through uses curl and openssl",
)


def walkthrough_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


class Bash:
    """One bash that runs blocks in turn (variables carry over, as in a reader's terminal)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def run(self, block: str, timeout: float = 60.0) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(block + f"\necho; echo {DONE}\n")
        self.process.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line.strip() == DONE:
                return "".join(out)
            out.append(line)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


class DevRun:
    """``./dev run`` with its own folder and ports; stopped with SIGTERM like a terminal's."""

    def __init__(self, dev_dir: Path) -> None:
        self.port, self.gateway_port = free_port(), free_port()
        self.dev_dir = dev_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
        self.env.update(
            DEV_DIR=str(dev_dir),
            DEV_VENV=sys.prefix,
            DEV_NO_INSTALL="1",
            DEV_GATEWAY_PORT=str(self.gateway_port),
            FDPUSH_PORT=str(self.port),
            FDPUSH_GATEWAY_ALLOWLIST=f"127.0.0.1:{self.gateway_port}",
        )
        self.log = (dev_dir.parent / "dev-run.log").open("wb")
        self.process = subprocess.Popen(
            [str(ROOT / "dev"), "run"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logs()
            try:
                if httpx.get(self.url("/health/ready"), timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("./dev run did not become ready:\n" + self.logs())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        self.log.flush()
        return (self.dev_dir.parent / "dev-run.log").read_text(errors="replace")

    def swap(self, block: str) -> str:
        """The README's block with this run's folder, ports and virtualenv."""
        return (
            block.replace(".fdpush-dev/", f"{self.dev_dir}/")
            .replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")
            .replace("127.0.0.1:8443", f"127.0.0.1:{self.gateway_port}")
            .replace(".venv/bin/", f"{sys.prefix}/bin/")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def dev_run(tmp_path: Path) -> Iterator[DevRun]:
    running = DevRun(tmp_path / "dev")
    yield running
    running.stop()


def internal_key(dev_dir: Path) -> str:
    match = re.search(r"^FDPUSH_INTERNAL_API_KEY=(.+)$", (dev_dir / "dev.env").read_text(), re.M)
    assert match is not None
    return match.group(1)


def test_the_walkthrough_does_what_the_readme_says(dev_run: DevRun) -> None:
    blocks = walkthrough_blocks()
    assert len(blocks) == 3, "register and choose; events; delete"
    bash = Bash(dev_run.env)
    try:
        first = bash.run(dev_run.swap(blocks[0]))
        assert first.startswith("{}"), first  # registered
        assert '"pushkey":"Xp/MzCt8+9DcSNE9="' in first.replace(" ", "")
        assert "M_MISSING_PARAM" in first

        second = bash.run(dev_run.swap(blocks[1]))
        events = re.search(r'\{"event_id":"(\w+)","notifications":(\d+)\}', second)
        assert events is not None, second
        assert events.group(2) == "1", "the device has the channel enabled"

        # A reader reads the output; the test waits for the delivery instead.
        auth = {"Authorization": f"Bearer {internal_key(dev_run.dev_dir)}"}
        deadline = time.monotonic() + 20
        while True:
            counts = httpx.get(
                dev_run.url(f"/internal/v1/events/{events.group(1)}"), headers=auth
            ).json()["counts"]
            if counts.get("delivered") == 1:
                break
            assert time.monotonic() < deadline, (counts, dev_run.logs())
            time.sleep(0.05)
        # The block's looks at the gateway and the history, now that there is something to see.
        looks = blocks[1][blocks[1].index("# What the app would receive") :]
        again = bash.run(dev_run.swap(looks))
        assert '"ciphertext"' in again, "the gateway recorded the sealed notification"
        assert '"identifier":"msg-1"' in again.replace(" ", ""), "the history has it"

        third = bash.run(dev_run.swap(blocks[2]))
        assert third.startswith("{}"), third
        assert '{"pushers":[]}' in third.replace(" ", ""), third
    finally:
        bash.close()
