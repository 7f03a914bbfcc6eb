"""Workers claim dispatches (groups of notifications), not the notifications one by one.

Until now a worker leased each notification row (an update of its lease columns) and found the
due ones through a partial index over ``status = 'pending'``. Ending a notification changed a
column that index depends on, so on PostgreSQL every settle wrote a new row version with a new
entry in each of the outbox's indexes: the largest cost of delivery in the database. Measured
apart from the service (100-row batches, 40,000 notifications, the outbox's indexes): the
settle's update cost 24.5 to 26.5 µs and 424 bytes of WAL per notification with the partial index,
7.5 to 8.3 µs and 112 bytes without it (a HOT update: the new version on the row's page, no index
entry).

Now the rows waiting to be sent are named by ``dispatches``: one row per group of up to a
gateway request's notifications, written in the statement that queues them. A claim leases a
dispatch (one row for up to a hundred notifications), and ending a notification touches only
its own row, which no index holds by ``status`` any more.

The upgrade gives every pending notification a dispatch (its gateway's, a hundred at most, by
due time), then drops the partial index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ID_LIST = sa.Text().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dispatches",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("gateway", sa.String(1024), nullable=False),
        sa.Column("notification_ids", _ID_LIST, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.String(512), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dispatches"),
    )
    op.create_index("ix_dispatches_next_attempt_at", "dispatches", ["next_attempt_at"])
    ids = "array_agg(id ORDER BY id)" if _postgresql() else "json_group_array(id)"
    # Pending notifications in groups of a hundred per gateway, by due time; leases of a worker
    # still running are not carried over (its rows may be sent once more: at-least-once).
    op.execute(
        "INSERT INTO dispatches (gateway, notification_ids, next_attempt_at, last_error,"  # noqa: S608
        " created_at)"
        f" SELECT gateway, {ids}, min(next_attempt_at), min(last_error), min(created_at)"
        " FROM (SELECT id, gateway, next_attempt_at, last_error, created_at,"
        "  (row_number() OVER (PARTITION BY gateway ORDER BY next_attempt_at, id) - 1) / 100"
        "  AS grp FROM notifications WHERE status = 'pending') AS pending"
        " GROUP BY gateway, grp"
    )
    op.drop_index("ix_notifications_pending_due", table_name="notifications")


def downgrade() -> None:
    op.create_index(
        "ix_notifications_pending_due",
        "notifications",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    # The rows' own due times and leases are still written: the dispatches can go.
    op.execute(
        "UPDATE notifications SET lease_owner = NULL, lease_expires_at = NULL"
        " WHERE status = 'pending'"
    )
    op.drop_index("ix_dispatches_next_attempt_at", table_name="dispatches")
    op.drop_table("dispatches")


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")
