"""Every text column that an index holds compares byte by byte on PostgreSQL (collation ``C``).

Until now such columns took the database's collation. Created with a locale such as
``de_DE.UTF-8`` or an ICU locale, as a German deployment's database may well be, every key
that an index walks on an insert or a lookup was compared under the language's rules, although
every one of these columns holds an id, a keyed pseudonym or index in hex, or a name, that is
only ever looked up. Measured apart from the service (``bench/bench_queue.py --postgres-locale
...``, batches of 100, three runs alternated with the code before; PostgreSQL's time per
notification from ``pg_stat_statements``): under glibc's ``de_DE.UTF-8`` the queueing statement
took 30.3 to 32.3 µs before and 14.3 to 16.1 after, the settle 13.2 to 15.3 before and 4.4 to
5.1 after; under the ICU locale ``de-DE`` 17.4 to 20.3 against 13.1 to 16.3, and 5.9 to 7.6
against 3.4 to 5.0. Under ``C.UTF-8`` (the test machines' default) nothing changed.

For hex ids, pseudonyms and indexes the order is the same under every locale; names (app ids,
channel ids) are compared for equality only. The upgrade changes each column's collation in one
``ALTER TABLE`` per table: the rows are not rewritten, but each index on those columns is built
again, and the table is locked meanwhile. SQLite compares bytes anyway: nothing changes there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# table: (column, varchar length) for every text column an index holds
KEYS: dict[str, tuple[tuple[str, int], ...]] = {
    "pushers": (("user_id", 255), ("app_id", 64), ("pushkey", 512)),
    "pusher_keys": (("period", 7),),
    "channel_states": (("user_id", 255), ("pushkey", 512), ("channel_id", 128)),
    "audit_log": (("user_id", 255),),
    "events": (("id", 32),),
    "notifications": (("id", 32), ("event_id", 32)),
    "rs_idempotency": (("client", 255), ("key", 64)),
    "data_steps": (("name", 64),),
    "keyring": (("name", 32),),
}


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in KEYS.items():
        changes = ", ".join(
            f'ALTER COLUMN {column} TYPE varchar({length}) COLLATE "{collation}"'
            for column, length in columns
        )
        op.execute(f"ALTER TABLE {table} {changes}")  # our own names only


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
