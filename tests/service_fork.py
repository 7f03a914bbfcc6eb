"""``fdpush serve`` as a process of its own, forked from one that has imported fdpush already.

A test service used to start as ``python -m fdpush serve``: a new interpreter that spends a
second of CPU importing fdpush before the app is set up — a third of the test suite's CPU.
Here multiprocessing's fork server imports fdpush once (per test process), and each service is
a fork of it that runs the same entry point with the same arguments, environment, working
folder and output file as the command would: a real process, on its own port, that a test
can stop, kill with SIGKILL or restart like the command.

This module is what the fork server imports: the standard library and ``fdpush`` only.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["service_fork", "fdpush.cli", "fdpush.web.app"])


def _run_command(args: Sequence[str], env: dict[str, str], cwd: str, output: str) -> None:
    """In the forked process: become ``fdpush ARGS`` run in ``cwd`` with ``env``, output to
    the file ``output``, and run it (its exit status is the process's)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    sys.argv = ["fdpush", *args]
    from fdpush.cli import main

    main()


class ForkedCommand:
    """``fdpush ARGS`` in a forked process, with the part of ``subprocess.Popen``'s interface
    the tests use (``pid``, ``poll``, ``wait``, ``terminate``, ``kill``, ``returncode``)."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str], cwd: Path, output: Path):
        self.args = ["fdpush", *args]
        self._process = _CONTEXT.Process(
            target=_run_command, args=(list(args), env, str(cwd), str(output)), daemon=True
        )
        self._process.start()
        assert self._process.pid is not None
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self._process.exitcode

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


def stop_fork_server() -> None:
    """End the fork server, once every service is stopped: the processes it forked are then
    counted (CPU time, ``time -v``) with the test run that waited for it."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # multiprocessing's own way to stop it (private)
