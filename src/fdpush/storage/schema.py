"""The tables, as SQLAlchemy Core metadata shared by the queries and the migrations.

The schema is changed only through a new migration in ``migrations/versions``; this module
describes the state the newest migration produces (a test checks they agree).

No user id and no pushkey is stored in the clear (ZETA A_29957, variant A): every ``user_id``
column holds the user's keyed pseudonym (``KeyVault.pseudonym``), every ``pushkey`` column the
pushkey's keyed index (``KeyVault.pushkey_index``); the pushkey itself, which the gateway needs,
only sealed, in ``pushers.pushkey_sealed``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Integer primary keys: BigInteger on PostgreSQL, the rowid alias INTEGER on SQLite.
_ID = BigInteger().with_variant(Integer(), "sqlite")
_ID_LIST = Text().with_variant(postgresql.ARRAY(Text()), "postgresql")


def _key(length: int) -> TypeEngine[str]:
    """A text column that an index holds. Every such column holds ids, keyed pseudonyms and
    indexes in hex, or names, and is only ever looked up, never sorted for a reader: on
    PostgreSQL it compares byte by byte (collation ``C``, 0010) whatever the database's
    locale, which would otherwise compare every key the indexes walk under its language's
    rules (SQLite compares bytes anyway)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


pushers = Table(
    "pushers",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("user_id", _key(255), nullable=False),
    Column("app_id", _key(64), nullable=False),
    Column("pushkey", _key(512), nullable=False),  # the keyed index (64 hex digits)
    Column("kind", String(16), nullable=False),
    Column("app_display_name", String(256), nullable=False),
    Column("device_display_name", String(256), nullable=False),
    Column("profile_tag", String(256), nullable=True),
    Column("lang", String(32), nullable=False),
    Column("data", Text, nullable=False),  # the client's JSON object, stored whole
    Column("pushkey_ts", BigInteger, nullable=False),  # seconds; forwarded to the gateway
    Column("encryption_method", String(32), nullable=True),
    Column("key_identifier", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The pushkey, sealed under the master key bound to (user_id, app_id, pushkey index). NULL
    # only in rows written before 0005, until the service's data step seals them.
    Column("pushkey_sealed", LargeBinary, nullable=True),
    UniqueConstraint("user_id", "app_id", "pushkey"),
    Index(None, "app_id", "pushkey"),
    Index(None, "user_id", "pushkey"),
)

# One row per month generation of a pusher's key schedule; secret and key sealed together
# under the master key. The iss itself is never stored (concept: the FD deletes it).
pusher_keys = Table(
    "pusher_keys",
    metadata,
    Column(
        "pusher_id",
        _ID,
        ForeignKey("pushers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("period", _key(7), primary_key=True),
    Column("material", LargeBinary, nullable=False),
)

# Explicit channel choices of a device (user + pushkey); a channel without a row has the
# catalog default.
channel_states = Table(
    "channel_states",
    metadata,
    Column("user_id", _key(255), primary_key=True),
    Column("pushkey", _key(512), primary_key=True),
    Column("channel_id", _key(128), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", String(64), nullable=False),
    Column("actor", String(255), nullable=False),  # the user (or "system") that caused it
    Column("user_id", _key(255), nullable=False),  # whose pusher it was
    Column("app_id", String(64), nullable=False),
    Column("pushkey_hash", String(64), nullable=False),  # the pushkey's keyed index
    Column("detail", Text, nullable=True),
    Index(None, "user_id", "at"),
)

# --- delivery ---------------------------------------------------------------------------------
# Times here are epoch milliseconds: the outbox does arithmetic on them, on both dialects.

events = Table(
    "events",
    metadata,
    Column("id", _key(32), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("prio", String(4), nullable=False),
    Column("identifier", String(256), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    # The payload, sealed under the master key: the worker seals each device's notification from
    # it; kept while a notification is pending, and for the history's retention when ``history``.
    Column("payload", LargeBinary, nullable=True),
    Column("history", Boolean, nullable=False, server_default=false()),
    Index(None, "created_at"),
    # The events that still hold a payload (0009): what the pruning walks to forget payloads.
    Index(
        "ix_events_sealed",
        "id",
        postgresql_where=text("payload IS NOT NULL"),
        sqlite_where=text("payload IS NOT NULL"),
    ),
)

# The outbox: one small row per (event, pusher); the worker claims rows with a lease and seals
# each notification when it sends it. ``body`` is set only on rows written before 0003 (the
# whole gateway body, sealed at rest), which are sent from it.
notifications = Table(
    "notifications",
    metadata,
    Column("id", _key(32), primary_key=True),  # also the gateway batch item id
    # No foreign keys (0006): checking them cost as much as writing the row. The event and its
    # notifications are written and removed together; a deleted pusher's id refers to nothing
    # (PostgreSQL never reuses it; on SQLite, which may, a trigger sets it NULL).
    Column("event_id", _key(32), nullable=False),
    Column("gateway", String(1024), nullable=False),  # the gateway API base, …/push/v1/
    Column("encrypted", Boolean, nullable=False),
    Column("body", LargeBinary, nullable=True),
    Column("status", String(16), nullable=False),  # pending, delivered, rejected, failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("last_error", String(512), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    Column("pusher_id", _ID, nullable=True),
    # No index holds ``status`` (0008): ending a notification rewrites no index entry (on
    # PostgreSQL a HOT update). What is waiting is found through ``dispatches``.
    Index(None, "event_id"),
    Index(None, "pusher_id", "created_at"),
)

# What a worker claims (0008): a group of pending notifications for one gateway, written with
# them (at most one gateway request's worth), or by a worker that gives some back for later.
# Every pending notification is in a dispatch; a dispatch may still name notifications that
# ended meanwhile (a deregistered device's), which a claim passes over. A worker deletes the
# dispatches it claimed once their notifications are settled or given back, in the statement
# that does so. The ids: PostgreSQL ``text[]``, SQLite a JSON array.
dispatches = Table(
    "dispatches",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("gateway", String(1024), nullable=False),
    Column("notification_ids", _ID_LIST, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("last_error", String(512), nullable=True),
    Column("created_at", BigInteger, nullable=False),  # of its oldest notification
    Index(None, "next_attempt_at"),
)

# --- the RS API (ZETA) --------------------------------------------------------------------------

# One receipt per (technical user, Idempotency-Key): inserted first (the primary key makes a
# concurrent repeat lose the insert), completed with the answer once the notification is queued.
rs_idempotency = Table(
    "rs_idempotency",
    metadata,
    Column("client", _key(255), primary_key=True),
    Column("key", _key(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # HMAC of the parsed request (identity key)
    Column("notification_id", String(36), nullable=True),  # NULL while the first is in flight
    Column("status", String(32), nullable=True),
    Column("accepted_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),  # epoch ms
    Index(None, "created_at"),
)

# Facts about the stored data that migrations cannot establish (they have no master key), e.g.
# that the user ids were replaced by their pseudonyms, the pushkeys by their sealed copies.
data_steps = Table(
    "data_steps",
    metadata,
    Column("name", _key(64), primary_key=True),
    Column("done_at", BigInteger, nullable=False),  # epoch ms
)

# The identity keys (of the user pseudonyms and pushkey indexes), sealed under the master key:
# they must outlive a rotation of the master key, since the ids behind the stored pseudonyms
# are not known. ``identity``: under the current master key; ``identity-next``: only while a
# rotation to a new master key is unfinished (fdpush.domain.keyring).
keyring = Table(
    "keyring",
    metadata,
    Column("name", _key(32), primary_key=True),
    Column("material", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # epoch ms
)
