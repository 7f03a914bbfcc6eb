"""A serving process settles its garbage collector once started, and garbage cycles still go.

Each test runs in a fresh interpreter: the collector's settings are the whole process's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fdpush.heap import YOUNG_THRESHOLD


def _python(code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_api_process_settles_the_collector_when_its_startup_is_done(tmp_path: Path) -> None:
    code = f"""
import asyncio, gc
from fdpush.config import Settings
from fdpush.web.app import create_app

settings = Settings(
    _env_prefix="FDPUSH_TEST_UNUSED_", _env_file=None, auth_mode="dev",
    auth_dev_secret="test-secret-0123456789abcdef0123456789",
    database_url="sqlite:///{tmp_path / "fdpush.db"}", master_key_file="{tmp_path / "key"}",
    channels="erp.task.activate", serve_worker=False,
)
app = create_app(settings, access_log=False)

async def main():
    before = (gc.get_threshold()[0], gc.get_freeze_count())
    async with app.router.lifespan_context(app):
        during = (gc.get_threshold()[0], gc.get_freeze_count())
    print(*before, *during)

asyncio.run(main())
"""
    threshold_before, frozen_before, threshold, frozen = map(int, _python(code, tmp_path).split())
    # CPython's own settings until then (700 young objects on 3.11 and 3.12, 2,000 since 3.13)
    assert threshold_before != YOUNG_THRESHOLD and frozen_before == 0
    assert threshold == YOUNG_THRESHOLD
    assert frozen > 10_000  # modules, the app and its models: out of every pass


def test_a_garbage_cycle_is_still_collected_after_settling(tmp_path: Path) -> None:
    code = f"""
import gc, weakref
from fdpush import heap

heap.settle()
collected = []

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle: reference counting alone never frees it
weakref.finalize(a, collected.append, "a")
del a, b
keep = [[] for _ in range({YOUNG_THRESHOLD} + 1000)]  # new containers: a young pass runs
print(collected)
"""
    assert _python(code, tmp_path) == "['a']"
