"""PostgreSQL: the plans the service's connections cache read the outbox by key, even when they
were made while its tables were empty.

A prepared statement's generic plan is costed with the table sizes of the moment it is made. On
an empty, analysed outbox that plan scans the tables, and a connection keeps it while the outbox
grows to tens of thousands of rows: each claim then scans every notification once per dispatch.
``Database(by_key=True)`` (the service's connections) prices sequential scans out. Each test
asks PostgreSQL for the generic plan of the delivery's statements on an empty outbox, with the
service's settings and, to show the difference, without them. The last two ask for the plans
of the fan-out read and of settling while the statistics lag behind the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from fdpush.storage import outbox
from fdpush.storage.database import Database

# The delivery's statements that read the outbox by the ids a batch names, with parameters.
STATEMENTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "claim": (
        outbox._CLAIM_WITH_CONTEXT,
        {"owner": "w", "until": 99, "now": 1, "skip": [], "limit": 3},
    ),
    "settle alike": (
        outbox._SETTLE_ALIKE,
        {"status": "delivered", "now": 1, "error": None, "ids": ["a", "b"], "done": [1]},
    ),
    "settle": (
        outbox._SETTLE,
        {
            "now": 1,
            "ids": ["a", "b"],
            "statuses": ["delivered", "failed"],
            "errors": [None, "x"],
            "done": [1],
        },
    ),
}
OUTBOX = ("notifications", "events", "dispatches", "pushers", "pusher_keys")


@pytest.fixture
def database_url(database_url: str, backend: str) -> str:
    """The storage tests' fresh database, on PostgreSQL only."""
    if backend != "postgresql":
        pytest.skip("generic plans of prepared statements are PostgreSQL's")
    return database_url


@contextlib.asynccontextmanager
async def _connection(url: str, *, by_key: bool = True) -> AsyncIterator[tuple[Database, Any]]:
    """A migrated database and the asyncpg connection under one of its pooled connections."""
    db = Database(url, pool_size=1, by_key=by_key)
    try:
        await db.migrate()
        async with db.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            yield db, raw
    finally:
        await db.close()


async def _explain(
    db: Database, raw: Any, statement: Any, values: dict[str, Any], *, generic: bool = False
) -> str:
    """EXPLAIN of one of the service's statements with these values, as PostgreSQL plans it:
    for these values (a custom plan), or ``generic``, as the service's connections plan a
    prepared statement once for all values."""
    compiled = statement.compile(dialect=db.engine.dialect)
    arguments = [values[p] for p in compiled.positiontup or ()]
    if not generic:
        rows = await raw.fetch(f"EXPLAIN {compiled}", *arguments)
        return "\n".join(r[0] for r in rows)
    await raw.execute(f"SET plan_cache_mode = force_generic_plan; PREPARE explained AS {compiled}")
    try:
        kinds = await raw.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'explained'"
        )
        # EXECUTE takes no parameters of its own: each value as a literal of its type.
        literals = [
            await raw.fetchval(f"SELECT quote_nullable(CAST($1 AS {kind})) || '::{kind}'", value)
            for value, kind in zip(arguments, kinds, strict=True)
        ]
        rows = await raw.fetch(f"EXPLAIN EXECUTE explained({', '.join(literals)})")
    finally:
        await raw.execute("DEALLOCATE explained")
    return "\n".join(r[0] for r in rows)


async def _generic_plans(url: str, *, by_key: bool) -> dict[str, str]:
    """The generic plan of each of STATEMENTS on an empty, analysed outbox, as EXPLAIN says."""
    plans = {}
    async with _connection(url, by_key=by_key) as (db, raw):
        await raw.execute("ANALYZE")
        for name, (statement, values) in STATEMENTS.items():
            plans[name] = await _explain(db, raw, statement, values, generic=True)
    return plans


def _scanned(plan: str) -> set[str]:
    return {table for table in OUTBOX if f"Seq Scan on {table} " in plan}


def test_the_services_plans_read_the_outbox_by_key_whatever_its_size(database_url: str) -> None:
    plans = asyncio.run(_generic_plans(database_url, by_key=True))
    assert {name: _scanned(plan) for name, plan in plans.items()} == {
        name: set() for name in STATEMENTS
    }, plans


def test_without_the_services_settings_the_same_plans_scan_the_outbox(database_url: str) -> None:
    plans = asyncio.run(_generic_plans(database_url, by_key=False))
    assert "notifications" in _scanned(plans["claim"]), plans["claim"]
    assert "notifications" in _scanned(plans["settle alike"]), plans["settle alike"]


def test_what_must_scan_is_not_compiled(database_url: str) -> None:
    """The pending gauge sums over every dispatch: no index helps, so it scans, priced as if
    it cost ten billion; JIT would compile it each time (about 200 ms)."""

    async def explain() -> str:
        async with _connection(database_url) as (_, raw):
            await raw.execute(
                "INSERT INTO dispatches (gateway, notification_ids, next_attempt_at, "
                "created_at) SELECT 'g', ARRAY['a', 'b'], 0, n FROM generate_series(1, 50) n"
            )
            rows = await raw.fetch(
                "EXPLAIN (ANALYZE) SELECT coalesce(sum(cardinality(notification_ids)), 0), "
                "min(created_at) FROM dispatches"
            )
            return "\n".join(r[0] for r in rows)

    plan = asyncio.run(explain())
    assert "Seq Scan on dispatches" in plan
    assert "JIT" not in plan, plan


def test_the_operators_url_may_set_the_planner_itself(database_url: str) -> None:
    async def setting(url: str, *, by_key: bool, name: str = "enable_seqscan") -> str:
        db = Database(url, pool_size=1, by_key=by_key)
        try:
            async with db.engine.connect() as conn:
                return str((await conn.execute(text(f"SHOW {name}"))).scalar())
        finally:
            await db.close()

    assert asyncio.run(setting(database_url, by_key=True)) == "off"
    assert asyncio.run(setting(database_url, by_key=False)) == "on"
    assert asyncio.run(setting(database_url + "?enable_seqscan=on", by_key=True)) == "on"
    mode = "plan_cache_mode"
    assert asyncio.run(setting(database_url, by_key=True, name=mode)) == "force_generic_plan"
    assert asyncio.run(setting(database_url, by_key=False, name=mode)) == "auto"
    assert asyncio.run(setting(database_url + "?plan_cache_mode=auto", by_key=True, name=mode)) == (
        "auto"
    )


def test_migrations_plan_as_postgresql_likes_and_leave_the_connection_by_key(
    database_url: str,
) -> None:
    async def during_and_after() -> tuple[str, str]:
        db = Database(database_url, pool_size=1, by_key=True)
        try:
            async with db.engine.connect() as conn:
                await conn.execute(text("CREATE TABLE probe (setting text)"))
                # A trigger records the setting a migration's statements run with.
                await conn.execute(
                    text(
                        "CREATE FUNCTION record_setting() RETURNS event_trigger LANGUAGE plpgsql "
                        "AS $$ BEGIN INSERT INTO probe "
                        "VALUES (current_setting('enable_seqscan')); END $$"
                    )
                )
                await conn.execute(
                    text(
                        "CREATE EVENT TRIGGER record_setting ON ddl_command_end "
                        "EXECUTE FUNCTION record_setting()"
                    )
                )
                await conn.commit()
            await db.migrate()
            async with db.engine.connect() as conn:
                during = (await conn.execute(text("SELECT min(setting) FROM probe"))).scalar()
                await conn.execute(text("DROP EVENT TRIGGER record_setting"))
                await conn.commit()
                after = (await conn.execute(text("SHOW enable_seqscan"))).scalar()
            return str(during), str(after)
        finally:
            await db.close()

    assert asyncio.run(during_and_after()) == ("on", "off")


def test_the_fan_out_read_looks_users_up_by_index_while_statistics_lag(database_url: str) -> None:
    """Statistics taken at 200 pushers, 3,000 there now (autovacuum has not caught up, as in a
    young service or while devices register): reading a hundred users' pushers still goes
    through the user id index, not through every row of the primary key."""

    async def plan() -> str:
        async with _connection(database_url) as (db, raw):
            await raw.execute("ALTER TABLE pushers SET (autovacuum_enabled = false)")
            add = (
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, "
                "device_display_name, lang, data, pushkey_ts, created_at, updated_at) "
                "SELECT md5('u' || n) || md5('v' || n), 'a.apns', md5('k' || n), 'http', "
                "'a', 'd', 'de', '{}', 1, now(), now() FROM generate_series($1::int, $2::int) n"
            )
            await raw.execute(add, 1, 200)
            await raw.execute("ANALYZE pushers")
            await raw.execute(add, 201, 3000)
            users = await raw.fetchval(
                "SELECT array_agg(user_id) FROM pushers WHERE id BETWEEN 1001 AND 1100"
            )
            values = {"users": users, "channels": ["c"]}
            return {
                "custom": await _explain(db, raw, outbox._RECIPIENTS, values),
                "generic": await _explain(db, raw, outbox._RECIPIENTS, values, generic=True),
            }

    for found in asyncio.run(plan()).values():
        assert "ix_pushers_user_id_pushkey" in found, found
        assert "pk_pushers" not in found, found


def _walks_the_whole_index(plan: str, index: str) -> bool:
    """Whether a scan of ``index`` reads it whole (no ``Index Cond`` under it)."""
    lines = plan.splitlines()
    for n, line in enumerate(lines):
        if f"using {index} " in line:
            depth = len(line) - len(line.lstrip())
            below = []
            for detail in lines[n + 1 :]:
                if len(detail) - len(detail.lstrip()) <= depth or "->" in detail:
                    break
                below.append(detail)
            if not any("Index Cond" in d for d in below):
                return True
    return False


def test_settling_looks_notifications_up_by_id_while_statistics_see_none_pending(
    database_url: str,
) -> None:
    """Statistics taken when every notification had ended (the usual state), then a burst:
    1,000 of 3,000 pending. Settling a hundred of them looks each up by id; joined to the ids
    only through ``unnest``, the planner walked the whole primary key once per id."""

    async def plans() -> dict[str, str]:
        async with _connection(database_url) as (db, raw):
            await raw.execute(
                "ALTER TABLE notifications SET (autovacuum_enabled = false);"
                "INSERT INTO notifications (id, event_id, gateway, encrypted, status, "
                "attempts, next_attempt_at, created_at) SELECT lpad(n::text, 32, '0'), 'e', "
                "'g', true, 'delivered', 0, 0, 0 FROM generate_series(1, 3000) n;"
                "ANALYZE notifications;"
                "UPDATE notifications SET status = 'pending' WHERE id > lpad('2000', 32, '0')"
            )
            values = {
                "status": "delivered",
                "now": 1,
                "error": None,
                "ids": [str(n).zfill(32) for n in range(2401, 2501)],
                "done": [1],
                "statuses": ["delivered"] * 100,
                "errors": [None] * 100,
            }
            return {
                f"{name}, {kind}": await _explain(db, raw, statement, values, generic=generic)
                for name, statement in (("alike", outbox._SETTLE_ALIKE), ("each", outbox._SETTLE))
                for kind, generic in (("custom", False), ("generic", True))
            }

    for name, plan in asyncio.run(plans()).items():
        assert not _walks_the_whole_index(plan, "pk_notifications"), (name, plan)


def test_pruning_looks_up_each_events_pending_notifications_by_index(database_url: str) -> None:
    """A chunk of pruning asks, for each event it walks, whether a notification of it is still
    pending: by the event_id index, one event at a time. As an anti join the planner merged the
    whole index with the events instead (measured: 256 ms a chunk, against 80)."""

    async def plans() -> dict[str, str]:
        async with _connection(database_url) as (db, raw):
            await raw.execute(
                "INSERT INTO events (id, user_id, channel, prio, created_at, payload, history) "
                "SELECT lpad(n::text, 32, '0'), 'u', 'c', 'high', 0, '\\x00', false "
                "FROM generate_series(1, 3000) n;"
                "INSERT INTO notifications (id, event_id, gateway, encrypted, status, "
                "attempts, next_attempt_at, created_at) SELECT lpad(n::text, 32, '0'), "
                "lpad((n % 3000 + 1)::text, 32, '0'), 'g', true, 'delivered', 0, 0, 0 "
                "FROM generate_series(1, 9000) n;"
                "ANALYZE"
            )
            common = {"lock": 1, "after": "", "limit": outbox.PRUNE_CHUNK}
            forget = {**common, "history_before": 10, "sent_before": 10}
            return {
                "forget": await _explain(db, raw, outbox._FORGET_CHUNK, forget, generic=True),
                "prune": await _explain(
                    db, raw, outbox._PRUNE_CHUNK, {**common, "before": 10}, generic=True
                ),
            }

    for name, plan in asyncio.run(plans()).items():
        assert "ix_notifications_event_id" in plan, (name, plan)
        assert not _walks_the_whole_index(plan, "ix_notifications_event_id"), (name, plan)


def test_a_claim_looks_each_pusher_and_event_up_by_key_whatever_the_statistics_said(
    database_url: str,
) -> None:
    """The claim's generic plan, made with the statistics of an outbox analysed empty (a fresh
    service) or small, then run on a grown one: each notification's pusher, key generations
    and event are looked up by key. Flattened into joins, the planner walked the whole primary
    key of the events for every notification (a join filter) or hashed every event (measured
    in a benchmark round: 113 µs and 350 blocks per notification instead of 10 µs and 13)."""

    async def plans() -> dict[str, str]:
        found = {}
        for name, rows in (("analysed empty", 0), ("analysed small", 300)):
            async with _connection(database_url) as (db, raw):
                await raw.execute(
                    "TRUNCATE pushers, pusher_keys, events, notifications, dispatches;"
                    "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, "
                    "device_display_name, lang, data, pushkey_ts, created_at, updated_at) "
                    "SELECT md5('u' || n), 'a.apns', md5('k' || n), 'http', 'a', 'd', 'de', "
                    "'{}', 1, now(), now() FROM generate_series(1, 300) n;"
                    "INSERT INTO pusher_keys SELECT id, '2026-11', '\\x00' FROM pushers;"
                    "INSERT INTO events (id, user_id, channel, prio, created_at, payload, "
                    "history) SELECT lpad(n::text, 32, '0'), 'u', 'c', 'high', 0, '\\x00', false "
                    f"FROM generate_series(1, {rows}) n;"
                    "INSERT INTO notifications (id, event_id, gateway, encrypted, status, "
                    "attempts, next_attempt_at, created_at, pusher_id) SELECT lpad(n::text, 32, "
                    "'0'), lpad(n::text, 32, '0'), 'g', true, 'pending', 0, 0, 0, n "
                    f"FROM generate_series(1, {rows}) n;"
                    "ANALYZE"
                )
                statement, values = STATEMENTS["claim"]
                found[name] = await _explain(db, raw, statement, values, generic=True)
        return found

    for name, plan in asyncio.run(plans()).items():
        for index in ("pk_events", "pk_pushers", "pk_pusher_keys", "pk_notifications"):
            assert index in plan, (name, index, plan)
            assert not _walks_the_whole_index(plan, index), (name, index, plan)
        assert "Hash" not in plan, (name, plan)
