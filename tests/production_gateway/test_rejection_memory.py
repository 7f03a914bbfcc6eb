"""The rejection memory in-process, with a clock the test moves: expiry, file, compaction."""

from __future__ import annotations

from pathlib import Path

from fdpush.gateway.production.rejections import RejectionMemory


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_remembered_per_app_until_it_expires() -> None:
    clock = Clock()
    memory = RejectionMemory(3600, clock=clock)
    memory.remember("a.apns", "pk")
    assert memory.is_rejected("a.apns", "pk")
    assert not memory.is_rejected("b.apns", "pk")
    assert not memory.is_rejected("a.apns", "other")
    clock.now += 3599
    assert memory.is_rejected("a.apns", "pk")
    clock.now += 2
    assert not memory.is_rejected("a.apns", "pk")
    assert len(memory) == 0


def test_the_file_keeps_digests_survives_restarts_and_stays_compact(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "rejected.txt"
    memory = RejectionMemory(3600, path=path, clock=clock)
    memory.remember("a.apns", "secret-pushkey")
    assert "secret-pushkey" not in path.read_text()
    with path.open("a") as file:
        file.write("cut-short-line")  # a crash in the middle of a write
    again = RejectionMemory(3600, path=path, clock=clock)
    assert again.is_rejected("a.apns", "secret-pushkey")
    assert len(path.read_text().splitlines()) == 1  # compacted at start

    clock.now += 3601  # all of these expire ...
    for i in range(1023):
        again.remember("a.apns", f"pk-{i}")
    clock.now += 3601
    again.remember("a.apns", "fresh")  # ... and the 1024th rejection compacts the file
    assert path.read_text().splitlines() == [path.read_text().splitlines()[0]]
    assert RejectionMemory(3600, path=path, clock=clock).is_rejected("a.apns", "fresh")
