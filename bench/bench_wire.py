"""Micro-benchmark of the Push Gateway API's wire objects on the sender's hot path.

What it measures
    One batch of 100 encrypted notifications, each to its own device, the way the delivery
    worker makes and sends it — in this process, on one core, no I/O:

    - ``compose``: 100 claimed outbox rows → 100 items ready to send
      (:func:`fdpush.delivery.compose.compose`: the event's payload opened once, each device's
      pushkey and month key opened, the payload sealed under it, the spec's
      ``EncryptedNotification`` and ``Device`` built, each batch item encoded once). Once as it
      runs, once with the pushkeys, the payloads, the key schedule and the sealing replaced by
      ready results:
      what is left is the wire objects' part, comparable with the floor.
    - ``request body``: the 100 encoded items joined into the ``notifyEncrypted/batch`` body.
    - ``answer → verdicts``: the gateway's ``BatchNotificationResponse`` for them (10 items with
      a rejected pushkey, results in reverse order) read and matched to one verdict each
      (:func:`fdpush.delivery.gateway.batch_verdicts`).
    - ``gateway reads the request``: the development gateway's strict validation of that body
      (:func:`fdpush.gateway.validation.parse`), which the delivery benchmark's gateway does
      for every batch.

    Beside them the floors: the same notifications built as dicts and encoded with orjson (no
    keys opened, nothing sealed), the answer read with ``orjson.loads`` and a loop of checks,
    and the request parsed by ``orjson.loads`` alone — no validation: the least this work costs
    in Python.

    Each figure is microseconds per batch of 100: the best of ``--rounds`` rounds of
    ``--number`` batches (the round least disturbed by anything else on the machine).

Usage
    .venv/bin/python bench/bench_wire.py                     # 7 rounds of 200 batches
    .venv/bin/python bench/bench_wire.py --quick --json out.json

Exit status: 0 (it checks that every path produced the same notifications and verdicts).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import orjson

from bench_api import machine_info, text_table
from fdpush import crypto
from fdpush.delivery import compose as compose_module
from fdpush.delivery.compose import Ready, compose
from fdpush.delivery.gateway import batch_body, batch_verdicts
from fdpush.domain.keys import Advance, KeyVault, advance
from fdpush.gateway.validation import parse
from fdpush.gateway_api import EncryptedBatchNotificationRequest
from fdpush.storage.outbox import Claimed, EventBody, Target

BATCH = 100
PERIOD = "2026-11"
GATEWAY = "https://gw.example/push/v1/"
APP_ID = "de.gematik.erezept.apns"


# --- the batch ---------------------------------------------------------------------------------


class Batch:
    """100 claimed rows of one event, each to its own encrypted pusher, and what they need."""

    def __init__(self) -> None:
        self.vault = KeyVault(os.urandom(32))
        self.rows: list[Claimed] = []
        self.targets: dict[int, Target] = {}
        payload = {"ChannelId": "erp.task.activate", "Identifier": "160.000.100.000.001.05"}
        self.bodies: dict[str, EventBody] = {}
        data = orjson.dumps({"url": GATEWAY, "format": "event_id_only"}).decode()
        self.pushkeys: dict[int, str] = {}
        for n in range(BATCH):
            # One event per user, as in the delivery benchmark's headline: each payload opened.
            user, pushkey, event = f"user-{n}", f"pk/{uuid.uuid4().hex}+=", f"e{n}"
            sealed = self.vault.seal_record("event-payload", event, orjson.dumps(payload))
            self.bodies[event] = EventBody(event, "high", "160.000.100.000.001.05", sealed, user)
            index, sealed_pushkey = self.vault.seal_pushkey(user, APP_ID, pushkey)
            generation = crypto.derive_generation(os.urandom(32), PERIOD)
            material = self.vault.seal(user, APP_ID, index, generation)
            self.targets[n] = Target(
                n, user, APP_ID, index, 1750000000, data, str(uuid.uuid4()),
                ((PERIOD, material),), sealed_pushkey,
            )  # fmt: skip
            self.pushkeys[n] = pushkey
            self.rows.append(Claimed(uuid.uuid4().hex, event, n, GATEWAY, True, None, 0, 0, 1))
        self.ciphertext = base64.b64encode(os.urandom(1052)).decode()
        self.opened = {
            event: compose_module._open_payload(self.vault, body)
            for event, body in self.bodies.items()
        }
        self.steps: dict[tuple[str, str, str], Advance | None] = {}
        for target in self.targets.values():
            owner = (target.user_id, target.app_id, target.pushkey)
            self.steps[owner] = advance(self.vault, owner, target.generations, PERIOD)

    def stubbed(self) -> contextlib.ExitStack:
        """Within it, the sealed pushkeys and payloads, the key schedule and the sealing give
        ready results."""
        stack = contextlib.ExitStack()
        stack.enter_context(
            mock.patch.object(
                compose_module, "_open_payload", lambda _vault, body: self.opened[body.id]
            )
        )
        stack.enter_context(
            mock.patch.object(
                compose_module, "_open_pushkey", lambda _vault, t: self.pushkeys[t.pusher_id]
            )
        )
        stack.enter_context(
            mock.patch.object(
                compose_module, "advance", lambda _vault, owner, *_: self.steps[owner]
            )
        )
        stack.enter_context(
            mock.patch.object(crypto, "seal_notification", lambda *_: self.ciphertext)
        )
        return stack

    def compose(self) -> list[Ready]:
        composed = compose(
            self.rows,
            self.targets,
            self.bodies,
            vault=self.vault,
            period=PERIOD,
            gateway_refusal=lambda _url: None,
        )
        assert len(composed.ready) == BATCH and not composed.key_changes
        return composed.ready

    def answer(self) -> bytes:
        """The gateway's answer: every item success, every tenth with a rejected pushkey."""
        results = []
        for n, row in enumerate(self.rows):
            rejected = [self.pushkeys[n]] if n % 10 == 0 else []
            status = "failed" if rejected else "success"
            result: dict[str, Any] = {"id": row.id, "status": status, "rejected": rejected}
            if rejected:
                result["error"] = "Pushkey rejected by the push provider"
            results.append(result)
        summary = {"total": BATCH, "successful": 90, "failed": 10, "partial": 0}
        return orjson.dumps({"results": results[::-1], "summary": summary})


# --- the floors: dicts and orjson ----------------------------------------------------------------


def floor_build(batch: Batch) -> list[bytes]:
    """What the sender sends, built as dicts and encoded with orjson (sealing not included)."""
    encoded = []
    for row in batch.rows:
        event = batch.bodies[row.event_id]
        target = batch.targets[row.pusher_id or 0]
        data = orjson.loads(target.data)
        data.pop("url", None)
        device = {
            "app_id": target.app_id,
            "pushkey": batch.pushkeys[target.pusher_id],
            "pushkey_ts": target.pushkey_ts,
            "data": data,
            "tweaks": {},
        }
        notification = {
            "ciphertext": batch.ciphertext,
            "time_message_encrypted": PERIOD,
            "key_identifier": target.key_identifier,
            "identifier": event.identifier,
            "prio": event.prio,
            "device": device,
        }
        encoded.append(orjson.dumps({"id": row.id, "notification": notification}))
    return encoded


def floor_verdicts(body: bytes, ids: set[str]) -> list[tuple[str, str]]:
    """The answer read with orjson and a loop of checks."""
    parsed = orjson.loads(body)
    verdicts = []
    for entry in parsed["results"]:
        if not isinstance(entry, dict) or entry.get("id") not in ids:
            continue
        rejected = entry.get("rejected")
        pushkeys = [k for k in rejected if isinstance(k, str)] if isinstance(rejected, list) else []
        if pushkeys:
            verdicts.append((entry["id"], "rejected"))
        elif entry.get("status") == "success":
            verdicts.append((entry["id"], "delivered"))
        else:
            verdicts.append((entry["id"], "retry"))
    return verdicts


# --- measuring ---------------------------------------------------------------------------------


def best_microseconds(work: Callable[[], object], rounds: int, number: int) -> float:
    """The best round's time per call, in microseconds."""
    work()  # warm: adapters built, caches filled
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(number):
            work()
        best = min(best, (time.perf_counter() - started) / number)
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    parser.add_argument("--number", type=int, default=200, help="batches per round (default 200)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 50 batches")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    rounds, number = (3, 50) if args.quick else (args.rounds, args.number)

    batch = Batch()
    ready = batch.compose()
    items = [r.item for r in ready]
    body = batch_body(items)
    answer = batch.answer()
    ids = {item.id for item in items}
    # The paths agree before they are timed: same notifications, same verdicts.
    with batch.stubbed():
        stubbed = [r.item.encoded for r in batch.compose()]
    assert [orjson.loads(e) for e in stubbed] == [orjson.loads(e) for e in floor_build(batch)]
    verdicts = batch_verdicts(answer, ids)
    assert verdicts is not None
    assert [(v.id, v.outcome) for v in verdicts] == floor_verdicts(answer, ids)
    assert not isinstance(parse(body, EncryptedBatchNotificationRequest), Exception)

    def measure(work: Callable[[], object]) -> float:
        return best_microseconds(work, rounds, number)

    with batch.stubbed():
        wire = measure(batch.compose)
        floor_wire = measure(lambda: floor_build(batch))
    figures = {
        "compose (keys opened, payload sealed)": (measure(batch.compose), None),
        "compose, keys and sealing stubbed": (wire, floor_wire),
        "request body (join 100 encoded items)": (measure(lambda: batch_body(items)), None),
        "answer → verdicts": (
            measure(lambda: batch_verdicts(answer, ids)),
            measure(lambda: floor_verdicts(answer, ids)),
        ),
        "gateway reads the request strictly": (
            measure(lambda: parse(body, EncryptedBatchNotificationRequest)),
            measure(lambda: orjson.loads(body)),
        ),
    }

    print(
        f"The Push Gateway API's objects on the sender's hot path: µs per batch of {BATCH} "
        f"encrypted notifications ({len(body):,} bytes), best of {rounds} rounds of {number}\n"
    )
    rows = [
        (
            name,
            f"{ours:,.0f}",
            "" if floor is None else f"{floor:,.0f}",
            "" if floor is None else f"{ours / floor:.2f}",
        )
        for name, (ours, floor) in figures.items()
    ]
    print(text_table(("what", "fdpush µs", "floor µs", "ratio"), rows, left_columns=1))
    print("\nfloor: dicts + orjson (build, encode), orjson.loads + a loop (answer), orjson.loads")
    print("alone (gateway); ratio: fdpush ÷ floor")
    if args.json is not None:
        result = {
            "batch": BATCH,
            "body_bytes": len(body),
            "rounds": rounds,
            "number": number,
            "machine": machine_info(),
            "microseconds_per_batch": {
                name: {"fdpush": ours, "floor": floor} for name, (ours, floor) in figures.items()
            },
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
