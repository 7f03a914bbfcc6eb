"""The connection to SQLite or PostgreSQL, transactions, named locks and migrations.

Write transactions serialise on *named locks* so that a rule spanning several rows (the
``append`` removal with the upsert, the per-user pusher limit) holds under concurrent writers:
PostgreSQL takes transaction-scoped advisory locks, in the order given; SQLite writes one
transaction at a time anyway (``BEGIN IMMEDIATE``), so its locks are implicit.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Connection,
    Select,
    TextClause,
    UpdateBase,
    bindparam,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

__all__ = ["Database", "Transaction", "lock_id"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_TAKE_LOCKS = text(
    "SELECT pg_advisory_xact_lock(t.id) FROM unnest(CAST(:ids AS bigint[]))"
    " WITH ORDINALITY AS t(id, n) ORDER BY t.n"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))
_MIGRATION_LOCK = "fdpush:migrations"
# A statement built once (a module constant, never one per call: compiled forms are kept by
# statement) with its parameters bound by name at execution.
_Query = Select[Any] | CompoundSelect[Any] | TextClause | UpdateBase
# Errors after which a raw connection is not handed to the next request.
_BROKEN = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)
# Prepared statements kept per connection: more than the service's distinct statements, so
# each is parsed and planned once per connection, not once per request.
_STATEMENT_CACHE_SIZE = 500
_T = TypeVar("_T")
# Every connection to a SQLite file, SQLAlchemy's and the direct one (``Database.sqlite``).
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=15000",
)


def lock_id(name: str) -> int:
    """A stable signed 64-bit id for a lock name (PostgreSQL advisory locks take bigint)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _async_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if parsed.drivername == "postgresql":
        return _asyncpg_url(parsed).render_as_string(hide_password=False)
    return url


def _asyncpg_url(parsed: URL) -> URL:
    """The URL for SQLAlchemy: host, port, user, password, database and our own options; the
    libpq parameters (``sslmode``, ``sslrootcert``, ...) go to asyncpg in ``_libpq_dsn``."""
    return parsed.set(
        drivername="postgresql+asyncpg",
        query={"prepared_statement_cache_size": str(_STATEMENT_CACHE_SIZE)},
    )


# The service's statements all find their rows by key. A plan PostgreSQL caches for a prepared
# statement (its "generic plan", chosen at the sixth execution) is costed with the table sizes of
# that moment: made while the outbox was still small (a new database, a quiet night), it scans
# whole tables, and keeps doing so for each batch once they hold tens of thousands of rows
# (until autovacuum's next ANALYZE replans it, a minute or more later). Measured: a claim at
# 127 µs per notification instead of 36, a settle at 46 instead of 18. With sequential scans
# priced out, every plan is by index whatever the sizes it was costed with; a statement that has
# no index to use still scans (nothing is refused). Such a statement (the pending gauge's sum
# over the dispatches) is then costed above ``jit_above_cost`` and was compiled with LLVM on
# every run: 200 ms for a scan of a few pages. No statement of the service is long enough for
# JIT to pay off: it is off as well.
#
# And they are planned once per connection, not at each execution: PostgreSQL kept custom plans
# for most executions of the hottest statements (the fan-out read and the queueing statement 166
# of 200 times a run, the claim 27 of 33), whose generic plans are the same walks of the same
# indexes (tests/storage/test_plans.py). Planning them cost PostgreSQL about 4 µs per
# notification, a tenth of what it spends on one.
_BY_KEY_SETTINGS = {"enable_seqscan": "off", "jit": "off", "plan_cache_mode": "force_generic_plan"}


def _asyncpg_connect_args(url: str, *, by_key: bool = False) -> dict[str, Any]:
    """The operator's URL as a libpq DSN for asyncpg, which reads ``sslmode``, ``sslrootcert``
    and the other libpq parameters as libpq does (unknown ones become server settings, such as
    ``application_name``), except ``connect_timeout``, which it takes as ``timeout``.

    ``by_key``: plans by index (``_BY_KEY_SETTINGS``), unless the URL sets them itself."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    query = dict(parsed.query)
    args: dict[str, Any] = {}
    timeout = query.pop("connect_timeout", None)
    if isinstance(timeout, str) and timeout.isdigit() and int(timeout) > 0:
        args["timeout"] = int(timeout)
    dsn = parsed.set(drivername="postgresql", query=query)
    args["dsn"] = dsn.render_as_string(hide_password=False)
    if by_key:
        args["server_settings"] = {k: v for k, v in _BY_KEY_SETTINGS.items() if k not in query}
    return args


class Database:
    """One engine and the ways the service uses it."""

    def __init__(self, url: str, *, pool_size: int = 10, by_key: bool = False) -> None:
        """``by_key``: the service's own connections, whose statements all read by key
        (PostgreSQL plans them by index: ``_BY_KEY_SETTINGS``); not for tools that read whole
        tables."""
        self.url = _async_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        self._sqlite_file: str | None = None
        self._sqlite_direct: sqlite3.Connection | None = None
        self._sqlite_thread: ThreadPoolExecutor | None = None
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            # A fixed pool: connections opened once and kept (no overflow opened and closed
            # again under load), no ping before each checkout (a dead connection fails one
            # statement and is replaced).
            kwargs.update(
                pool_size=pool_size,
                max_overflow=0,
                pool_pre_ping=False,
                pool_recycle=3600,
                connect_args=_asyncpg_connect_args(url, by_key=by_key),
            )
        else:
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                self._sqlite_file = database
            kwargs["async_creator"] = partial(_connect_sqlite, database or ":memory:")
        # A failing statement's error (logged with the traceback of an unexpected error) names
        # the statement, never its parameters: pushkeys, pseudonyms, sealed data.
        self.engine: AsyncEngine = create_async_engine(self.url, hide_parameters=True, **kwargs)
        # SQLite's connections are in autocommit mode already; ``fetch_all`` leaves out BEGIN.
        self._autocommit = self.engine.execution_options(fdpush_begin=None)
        self._compiled: dict[_Query, tuple[str, tuple[str, ...]]] = {}
        # SQLite has one writer at a time; queueing writers here, in order, beats SQLite's
        # busy handler, which polls with sleeps of up to 100 ms (p99 of over a second under load).
        self._sqlite_writer = asyncio.Lock()
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        else:
            event.listen(self.engine.sync_engine, "checkout", _learn_array_types)

    async def close(self) -> None:
        try:
            await self.engine.dispose()
        finally:
            if self._sqlite_thread is not None:
                direct, self._sqlite_direct = self._sqlite_direct, None
                thread, self._sqlite_thread = self._sqlite_thread, None
                if direct is not None:
                    await asyncio.get_running_loop().run_in_executor(thread, direct.close)
                thread.shutdown(wait=False)

    @property
    def sqlite_direct(self) -> bool:
        """Whether :meth:`sqlite` is there: a SQLite database in a file."""
        return self._sqlite_file is not None

    async def sqlite(self, work: Callable[[sqlite3.Connection], _T], *, write: bool) -> _T:
        """SQLite: ``work`` in one transaction on this process's own ``sqlite3`` connection, in
        its own thread; what it returns. For the hottest statements of delivery, written in SQL
        for SQLite: the whole transaction is one hop to that thread, where SQLite runs without
        holding the event loop (its C code releases the GIL), and none of SQLAlchemy's
        per-statement work happens in the loop. Writes queue behind the other writers of this
        process (``write``), as every write does.
        """
        if self._sqlite_file is None:
            raise RuntimeError("only for a SQLite database in a file")
        if self._sqlite_thread is None:
            self._sqlite_thread = ThreadPoolExecutor(1, thread_name_prefix="fdpush-sqlite")
        loop = asyncio.get_running_loop()
        call = partial(self._sqlite_transaction, work, write)
        if not write:
            return await loop.run_in_executor(self._sqlite_thread, call)
        async with self._sqlite_writer:
            return await loop.run_in_executor(self._sqlite_thread, call)

    def _sqlite_transaction(self, work: Callable[[sqlite3.Connection], _T], write: bool) -> _T:
        """In the SQLite thread: ``work`` between BEGIN (IMMEDIATE for a write) and COMMIT."""
        if self._sqlite_direct is None:
            assert self._sqlite_file is not None
            direct = sqlite3.connect(self._sqlite_file, isolation_level=None)
            for pragma in _SQLITE_PRAGMAS:
                direct.execute(pragma)
            self._sqlite_direct = direct
        direct = self._sqlite_direct
        direct.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(direct)
        except BaseException:
            if direct.in_transaction:
                direct.execute("ROLLBACK")
            raise
        direct.execute("COMMIT")
        return result

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a read transaction."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def fetch_all(
        self, statement: _Query, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """The rows of *one* statement, without BEGIN and COMMIT around it.

        For the hottest statements of the API and of delivery (a data-modifying one commits on
        its own when it returns). A single statement is atomic and sees one snapshot on
        its own, so no transaction is needed, which saves two round trips. On PostgreSQL the
        statement, compiled once, goes straight to asyncpg (its prepared statement cache), past
        SQLAlchemy's per-execution work. Use ``read`` for anything more than one statement.
        """
        if self.dialect == "sqlite":
            async with self._autocommit.connect() as conn:
                return (await conn.execute(statement, params)).all()
        sql, names = self._compile(statement)
        async with self._driver() as driver:
            rows: Sequence[Sequence[Any]] = await driver.fetch(sql, *(params[n] for n in names))
            return rows

    @asynccontextmanager
    async def transaction(self, *locks: str) -> AsyncIterator[Transaction]:
        """A write transaction holding the named locks, as ``write``, for statements built once.

        For the API's hottest writes. On PostgreSQL the statements go straight to asyncpg:
        BEGIN and the locks in one round trip, then one per statement, then COMMIT; SQLite
        runs them in ``write``'s transaction.
        """
        if self.dialect == "sqlite":
            async with self.write(*locks) as conn:
                yield Transaction(conn)
            return
        async with self._driver() as driver:
            # Lock ids are integers computed here, never input: safe to put in the text.
            await driver.execute(
                "BEGIN;" + "".join(f"SELECT pg_advisory_xact_lock({lock_id(n)});" for n in locks)
            )
            try:
                yield _DriverTransaction(driver, self._compile)
            except Exception:
                if not driver.is_closed():
                    await driver.execute("ROLLBACK")
                raise
            await driver.execute("COMMIT")

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection of the engine's pool (PostgreSQL), past SQLAlchemy's
        ``Connection``; it goes back to the pool unless it broke or was left in a transaction
        (then it is closed and replaced)."""
        proxied = await self.engine.raw_connection()
        driver = proxied.driver_connection
        assert driver is not None
        healthy = False
        try:
            yield driver
            healthy = True
        except _BROKEN:
            raise
        except Exception:
            healthy = True  # an error of the statement or of the caller: the connection is fine
            raise
        finally:
            if healthy and not driver.is_closed() and not driver.is_in_transaction():
                proxied.close()
            else:  # do not hand a broken or cancelled connection to the next request
                await greenlet_spawn(proxied.invalidate)

    def _compile(self, statement: _Query) -> tuple[str, tuple[str, ...]]:
        compiled = self._compiled.get(statement)
        if compiled is None:
            sql = statement.compile(dialect=self.engine.dialect)
            compiled = (str(sql), tuple(sql.positiontup or ()))
            self._compiled[statement] = compiled
        return compiled

    @asynccontextmanager
    async def write(self, *locks: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction holding the named locks (taken in the order given) until commit."""
        if self.dialect == "sqlite":
            async with self._sqlite_writer, self.engine.connect() as conn:
                conn = await conn.execution_options(fdpush_begin="BEGIN IMMEDIATE")
                async with conn.begin():
                    yield conn
            return
        async with self.engine.connect() as conn, conn.begin():
            if locks:
                # One round trip for all of them (an event batch names a hundred users), taken
                # in the order given: sorted input, then the calls (volatile, so after sorting).
                await conn.execute(_TAKE_LOCKS, {"ids": [lock_id(name) for name in locks]})
            yield conn

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrate(self) -> str | None:
        """Bring the schema to the newest migration; return the revision now in place.

        Several processes may start at once on one PostgreSQL: a session advisory lock lets one
        migrate while the others wait, then find nothing left to do.
        """
        async with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_lock(:id)"), {"id": lock_id(_MIGRATION_LOCK)}
                )
                # A migration may rewrite whole tables: sequential scans allowed (JIT stays off).
                await conn.execute(text("SET enable_seqscan = on"))
                await conn.commit()
            try:
                await conn.run_sync(_upgrade)
                await conn.commit()
                return await conn.run_sync(_current_revision)
            finally:
                if self.dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id(_MIGRATION_LOCK)}
                    )
                    await conn.execute(text("RESET enable_seqscan"))
                    await conn.commit()


# The array types the outbox's statements pass and read that asyncpg has no built-in codec for
# (it knows text[]): without this it looks each up with a query of its own on a connection's
# first use of the queueing statement, and again of the claim, in the middle of the traffic.
_ARRAY_TYPES = "SELECT $1::bytea[], $2::boolean[], $3::integer[], $4::bigint[], $5::varchar[]"


def _learn_array_types(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """On a PostgreSQL connection's first checkout: learn the array types at once (one lookup).

    Not on ``connect``: SQLAlchemy's asyncpg dialect sets its JSON codecs after that event,
    which empties asyncpg's cache of types."""
    if record.info.get("array_types"):
        return
    dbapi_connection.run_async(lambda driver: driver.prepare(_ARRAY_TYPES))
    record.info["array_types"] = True


class Transaction:
    """The statements of one write transaction (``Database.transaction``), each a statement
    built once, with its parameters by name."""

    def __init__(self, conn: AsyncConnection) -> None:
        # The SQLAlchemy connection the statements run on; None when they go to the driver.
        self.connection: AsyncConnection | None = conn
        self.dialect = conn.dialect.name

    async def fetch(self, statement: _Query, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """The rows the statement returns."""
        assert self.connection is not None
        return (await self.connection.execute(statement, params)).all()

    async def execute(self, statement: _Query, params: Mapping[str, Any]) -> None:
        """Run a statement; its rows, if any, are dropped."""
        assert self.connection is not None
        await self.connection.execute(statement, params)


class _DriverTransaction(Transaction):
    """PostgreSQL: each statement compiled once, then sent by asyncpg (prepared once per
    connection)."""

    def __init__(
        self,
        driver: asyncpg.Connection,
        compile_: Callable[[_Query], tuple[str, tuple[str, ...]]],
    ) -> None:
        self._driver = driver
        self._compile = compile_
        self.connection = None
        self.dialect = "postgresql"

    async def fetch(self, statement: _Query, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        sql, names = self._compile(statement)
        rows: Sequence[Sequence[Any]] = await self._driver.fetch(sql, *(params[n] for n in names))
        return rows

    async def execute(self, statement: _Query, params: Mapping[str, Any]) -> None:
        sql, names = self._compile(statement)
        await self._driver.execute(sql, *(params[n] for n in names))


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


class _SqliteConnection(aiosqlite.Connection):
    """aiosqlite hands every call of the sqlite3 module to its thread, a thread switch each, and
    SQLAlchemy makes nine of them for a transaction of one statement (a cursor, execute, fetch
    and close per statement, commit, and a rollback when the connection goes back to the pool):
    a small transaction cost about a millisecond, most of the idle service's event-to-gateway
    latency. Here the calls that never wait for the database file run in the event loop at
    once: making a cursor, taking the rows its statement has produced, closing it, a deferred
    ``BEGIN``, and a commit or rollback with no transaction open (nothing to do). Executing a
    statement and ending a transaction, which may wait for SQLite's lock (``busy_timeout``) or
    the disk, stay in the thread."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._connection is not None and _quick(self._connection, fn, args):
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]


def _quick(connection: sqlite3.Connection, fn: Any, args: tuple[Any, ...]) -> bool:
    """Whether the sqlite3 call ``fn(*args)`` returns without waiting for the database file."""
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    if owner is connection:
        return name == "cursor" or (
            name in ("commit", "rollback") and not connection.in_transaction
        )
    if isinstance(owner, sqlite3.Cursor):
        return name in ("fetchall", "fetchone", "fetchmany", "close") or (
            name == "execute" and args[:1] == ("BEGIN",)
        )
    return False


async def _connect_sqlite(database: str) -> aiosqlite.Connection:
    # Used from the loop's thread and from aiosqlite's, one call at a time.
    connection = _SqliteConnection(
        partial(sqlite3.connect, database, check_same_thread=False), iter_chunk_size=64
    )
    connection._thread.daemon = True  # as SQLAlchemy does: never keeps the process alive
    return await connection


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, so writes can BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        begin = conn.get_execution_options().get("fdpush_begin", "BEGIN")
        if begin is not None:  # None: autocommit, each statement its own transaction
            conn.exec_driver_sql(begin)
