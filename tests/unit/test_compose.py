"""In-process rules of sealing at send time: the key schedule's advance, what each claimed row
becomes, and how notifications are cut into gateway requests. No database, no network."""

from __future__ import annotations

import os

import orjson
import pytest

from fdpush import crypto
from fdpush.delivery.compose import (
    DEREGISTERED,
    NO_KEY,
    NO_PAYLOAD,
    TOO_LARGE,
    Ready,
    compose,
    refusal_by,
)
from fdpush.delivery.gateway import EncodedItem, batch_body
from fdpush.delivery.worker import _batches, _per_request
from fdpush.domain.errors import InvalidParam
from fdpush.domain.keys import RETENTION_MONTHS, KeyVault, advance
from fdpush.storage.outbox import Claimed, EventBody, Target

MASTER = bytes(range(32))
PUSHKEY = "pk/1"
# A pusher as stored: the user's pseudonym, the app, the pushkey's keyed index.
OWNER = ("user-1", "de.gematik.erezept.apns", KeyVault(MASTER).pushkey_index(PUSHKEY))
GATEWAY = "https://gw.example/push/v1/"


def chain(iss: bytes, start: str, months: int) -> list[crypto.KeyGeneration]:
    first = crypto.derive_generation(iss, start)
    return [first, *crypto.ratchet(first, _month(start, months - 1))]


def _month(period: str, steps: int) -> str:
    for _ in range(steps):
        period = crypto.next_period(period)
    return period


def stored(vault: KeyVault, generations: list[crypto.KeyGeneration]) -> list[tuple[str, bytes]]:
    return [(g.period, vault.seal(*OWNER, g)) for g in generations]


# --- the key schedule at send time ---------------------------------------------------------------


def test_this_months_key_needs_no_change() -> None:
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    step = advance(vault, OWNER, stored(vault, [g]), "2026-11")
    assert step is not None and not step.changes
    assert step.generation.key == g.key


@pytest.mark.parametrize("age", [1, 2, 3, 5])
def test_a_month_change_derives_in_sequence_and_drops_what_is_too_old(age: int) -> None:
    """Skipped months are derived one after the other from the youngest stored generation;
    what is persisted and deleted keeps no generation older than two months before today,
    and never deletes the youngest."""
    vault = KeyVault(MASTER)
    iss = os.urandom(32)
    [g] = chain(iss, "2026-01", 1)
    today = _month("2026-01", age)
    step = advance(vault, OWNER, stored(vault, [g]), today)
    assert step is not None and step.changes
    expected = chain(iss, "2026-01", age + 1)
    assert step.generation.key == expected[-1].key and step.generation.period == today
    added = dict(step.added)
    assert sorted(added) == [
        x.period for x in expected[1:] if crypto.periods_between(x.period, today) <= 2
    ]
    for period, material in added.items():
        opened = vault.open(*OWNER, period, material)
        assert opened.key == next(x.key for x in expected if x.period == period)
    assert list(step.removed) == (["2026-01"] if age > RETENTION_MONTHS else [])


def test_a_generation_ahead_of_today_is_used_as_it_is() -> None:
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-12", 1)
    step = advance(vault, OWNER, stored(vault, [g]), "2026-11")
    assert step is not None and step.generation.period == "2026-12" and not step.changes


def test_keys_under_another_master_key_give_nothing_not_plain_text() -> None:
    [g] = chain(os.urandom(32), "2026-11", 1)
    other = KeyVault(bytes(32))
    assert advance(KeyVault(MASTER), OWNER, stored(other, [g]), "2026-11") is None
    assert advance(KeyVault(MASTER), OWNER, [], "2026-11") is None


# --- what a claimed row becomes ------------------------------------------------------------------


def row(n: int, pusher_id: int | None = 1, event_id: str = "e1", **kw: object) -> Claimed:
    fields: dict[str, object] = {
        "id": f"n{n}",
        "event_id": event_id,
        "pusher_id": pusher_id,
        "gateway": GATEWAY,
        "encrypted": True,
        "body": None,
        "attempts": 0,
        "created_at": 0,
        "dispatch": 1,
    }
    fields.update(kw)
    return Claimed(**fields)


def target(vault: KeyVault, g: crypto.KeyGeneration, **kw: object) -> Target:
    fields: dict[str, object] = {
        "pusher_id": 1,
        "user_id": OWNER[0],
        "app_id": OWNER[1],
        "pushkey": OWNER[2],
        "pushkey_ts": 1700000000,
        "data": orjson.dumps({"url": GATEWAY, "format": "event_id_only"}).decode(),
        "key_identifier": "kid-1",
        "generations": tuple(stored(vault, [g])),
        "pushkey_sealed": vault.seal_pushkey(OWNER[0], OWNER[1], PUSHKEY)[1],
    }
    fields.update(kw)
    return Target(**fields)


def event(vault: KeyVault, payload: dict[str, object], event_id: str = "e1") -> EventBody:
    sealed = vault.seal_record("event-payload", event_id, orjson.dumps(payload))
    return EventBody(event_id, "high", "ident-1", sealed, OWNER[0])


def test_an_encrypted_pusher_gets_the_spec_notification_sealed_under_this_months_key() -> None:
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    out = compose(
        [row(1)],
        {1: target(vault, g)},
        {"e1": event(vault, {"ChannelId": "erp.task.activate"})},
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    [ready] = out.ready
    note = ready.item.item["notification"]
    assert ready.item.encrypted and ready.pushkey == PUSHKEY  # opened from its sealed copy
    assert note["time_message_encrypted"] == "2026-11" and note["key_identifier"] == "kid-1"
    assert note["identifier"] == "ident-1" and note["prio"] == "high"
    assert note["device"] == {
        "app_id": OWNER[1],
        "pushkey": PUSHKEY,
        "pushkey_ts": 1700000000,
        "data": {"format": "event_id_only"},  # everything but url
        "tweaks": {},
    }
    opened = crypto.open_notification(g.key, note["ciphertext"])
    assert orjson.loads(opened) == {"ChannelId": "erp.task.activate"}
    assert orjson.loads(ready.item.encoded) == {"id": "n1", "notification": note}


def test_rows_that_cannot_be_sent_end_with_their_reason() -> None:
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    foreign = target(vault, g, pusher_id=2, generations=tuple(stored(KeyVault(bytes(32)), [g])))
    out = compose(
        [row(1, pusher_id=None), row(2, pusher_id=2), row(3, event_id="gone"), row(4)],
        {1: target(vault, g), 2: foreign},
        {"e1": event(vault, {"a": 1}), "gone": EventBody("gone", "high", None, None, OWNER[0])},
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    assert out.failed == {"n1": DEREGISTERED, "n2": NO_KEY, "n3": NO_PAYLOAD}
    assert [r.row.id for r in out.ready] == ["n4"]


def test_a_row_naming_another_persons_pusher_is_never_sent_to_it() -> None:
    """The pusher a row names is gone and its id now belongs to someone else's device: the
    event's user decides, and the row fails as deregistered."""
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    other = "u:someone-else"
    someone_else = target(
        vault,
        g,
        user_id=other,
        pushkey_sealed=vault.seal_pushkey(other, OWNER[1], PUSHKEY)[1],
        generations=((g.period, vault.seal(other, OWNER[1], OWNER[2], g)),),
    )
    out = compose(
        [row(1)],
        {1: someone_else},
        {"e1": event(vault, {"a": 1})},
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    assert out.failed == {"n1": DEREGISTERED} and out.ready == []


def test_a_plain_sized_payload_for_a_pusher_now_encrypted_fails_never_goes_plain() -> None:
    """Accepted for a plain pusher (up to 3 KB), then the pusher registered again with
    encryption: the payload does not fit the frame, so the row fails — it is not sent plain."""
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    large = {"p": "x" * 2000}
    out = compose(
        [row(1), row(2, pusher_id=2)],
        {1: target(vault, g), 2: target(vault, g, pusher_id=2, key_identifier=None)},
        {"e1": event(vault, large)},
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    assert out.failed == {"n1": TOO_LARGE}
    [plain] = out.ready
    assert plain.row.id == "n2" and not plain.item.encrypted
    assert plain.item.item["notification"]["content"] == large


def test_a_pushkey_that_does_not_open_is_kept_not_sent() -> None:
    """A sealed pushkey moved to another pusher, or sealed under another master key, does not
    open: the row stays pending (stored data that cannot be opened), nothing is addressed."""
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    moved = vault.seal_pushkey("user-2", OWNER[1], PUSHKEY)[1]
    foreign = KeyVault(bytes(32), vault.identity).seal_pushkey(*OWNER[:2], PUSHKEY)[1]
    out = compose(
        [row(1), row(2, pusher_id=2), row(3, pusher_id=3)],
        {
            1: target(vault, g, pushkey_sealed=moved),
            2: target(vault, g, pusher_id=2, pushkey_sealed=foreign),
            3: target(vault, g, pusher_id=3, pushkey_sealed=None),
        },
        {"e1": event(vault, {"a": 1})},
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    assert out.ready == [] and out.failed == {}
    assert [r.id for r in out.unreadable] == ["n1", "n2", "n3"]


def test_a_gateway_off_the_allow_list_is_refused_at_send_time() -> None:
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)

    def check(url: str) -> None:
        raise InvalidParam("data.url: gateway gw.example:443 is not on the allow-list")

    out = compose(
        [row(1)],
        {1: target(vault, g)},
        {"e1": event(vault, {"a": 1})},
        vault=vault,
        period="2026-11",
        gateway_refusal=refusal_by(check),
    )
    assert out.ready == [] and "allow-list" in out.failed["n1"]


def test_a_new_month_is_reported_for_persisting_before_use() -> None:
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-09", 1)
    out = compose(
        [row(1), row(2)],
        {1: target(vault, g)},
        {"e1": event(vault, {"a": 1})},
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    [(pusher_id, user_id, step)] = out.key_changes  # once per pusher, not per row
    assert (pusher_id, user_id) == (1, OWNER[0])
    assert [p for p, _ in step.added] == ["2026-10", "2026-11"]


# --- cutting into requests -----------------------------------------------------------------------


def ready_item(n: int, blob: int) -> Ready:
    device = {"app_id": OWNER[1], "pushkey": "pk", "data": {"blob": "x" * blob}}
    note = {"ciphertext": "c", "time_message_encrypted": "2026-11", "key_identifier": "k"}
    item = EncodedItem.of({"id": f"n{n}", "notification": {**note, "device": device}})
    return Ready(row(n), item, "pk")


def test_batches_are_bounded_by_count_and_by_bytes() -> None:
    small = [ready_item(n, 10) for n in range(250)]
    assert [len(b) for b in _batches(small, 100, 250_000)] == [100, 100, 50]
    big = [ready_item(n, 6000) for n in range(60)]
    batches = _batches(big, 100, 250_000)
    assert len(batches) == 2 and sum(len(b) for b in batches) == 60
    for batch in batches:
        body = batch_body([r.item for r in batch])
        assert len(body) <= 250_000
    huge = [ready_item(0, 300_000)]
    assert [len(b) for b in _batches(huge, 100, 250_000)] == [1]


def test_a_claim_is_sealed_a_gateway_request_at_a_time() -> None:
    """Each gateway's rows in their order, at most a request's worth to a group: the worker
    seals and sends one group before it seals the next."""
    other = "https://other.example/push/v1/"
    rows = [row(n, gateway=GATEWAY if n % 3 else other) for n in range(250)]
    groups = _per_request(rows, 100)
    assert [(g[0].gateway, len(g)) for g in groups] == [
        (other, 84),
        (GATEWAY, 100),
        (GATEWAY, 66),
    ]
    assert [r.id for g in groups for r in g] == [
        r.id for gateway in (other, GATEWAY) for r in rows if r.gateway == gateway
    ]


def test_a_payload_is_parsed_only_for_a_plain_pusher_and_kept_when_it_is_not_json() -> None:
    """An encrypted pusher gets the stored payload's bytes inside its frame (nothing parses
    them); a plain one gets them as the notification's JSON ``content``. Stored bytes that open
    but are not JSON (the service never writes such) keep the plain pusher's row pending."""
    vault = KeyVault(MASTER)
    [g] = chain(os.urandom(32), "2026-11", 1)
    sealed = vault.seal_record("event-payload", "e2", b"{")
    bodies = {
        "e1": event(vault, {"a": [1, 2]}),
        "e2": EventBody("e2", "high", None, sealed, OWNER[0]),
    }
    plain = target(vault, g, pusher_id=2, key_identifier=None)
    out = compose(
        [row(1), row(2, pusher_id=2), row(3, event_id="e2"), row(4, pusher_id=2, event_id="e2")],
        {1: target(vault, g), 2: plain},
        bodies,
        vault=vault,
        period="2026-11",
        gateway_refusal=lambda _url: None,
    )
    sent = {r.row.id: r.item.item["notification"] for r in out.ready}
    assert set(sent) == {"n1", "n2", "n3"} and out.failed == {}
    assert orjson.loads(crypto.open_notification(g.key, sent["n1"]["ciphertext"])) == {"a": [1, 2]}
    assert sent["n2"]["content"] == {"a": [1, 2]}
    assert crypto.open_notification(g.key, sent["n3"]["ciphertext"]) == b"{"
    assert [r.id for r in out.unreadable] == ["n4"]
