"""A lean outbox: the event's payload sealed once, one small row per device, sealed at send time.

Until 0002 every notification row carried its whole gateway body (1.4 KB of ciphertext plus the
device), sealed a second time at rest, written, read back and opened again by the worker. From
here the event keeps its payload (sealed under the master key) and a notification row only says
which pusher gets which event; the worker ratchets the pusher's key to the sending month and
seals then (as the production e-prescription service does).

Rows written by 0002 and still pending keep their ``body`` and are sent from it, so an upgrade
with a backlog loses nothing. Their pusher is found by (user, app, pushkey); a row whose pusher
is gone stays with ``pusher_id`` NULL and ends ``failed`` ("device deregistered") when claimed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("pusher_id", _ID, nullable=True))
    op.execute(
        "UPDATE notifications SET pusher_id = (SELECT p.id FROM pushers p"
        " WHERE p.user_id = notifications.user_id AND p.app_id = notifications.app_id"
        " AND p.pushkey = notifications.pushkey)"
    )
    op.drop_index("ix_notifications_user_id_pushkey_created_at", table_name="notifications")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("user_id")
        batch.drop_column("app_id")
        batch.drop_column("pushkey")
        batch.alter_column("body", existing_type=sa.LargeBinary, nullable=True)
        batch.create_foreign_key(
            "fk_notifications_pusher_id_pushers",
            "pushers",
            ["pusher_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_index(
        "ix_notifications_pusher_id_created_at", "notifications", ["pusher_id", "created_at"]
    )
    # Claims look only at pending rows: a partial index stays small however much history is kept.
    op.drop_index("ix_notifications_status_next_attempt_at", table_name="notifications")
    op.create_index(
        "ix_notifications_pending_due",
        "notifications",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Room on each page for the claim's update to stay there (a HOT update: no index
        # entries rewritten), as claim and finish rewrite every row once each.
        op.execute("ALTER TABLE notifications SET (fillfactor = 70)")
    # The payload is now always kept (the worker seals from it); ``history`` says whether the
    # history endpoints may show it.
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("history", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.execute("UPDATE events SET history = (payload IS NOT NULL)")


def downgrade() -> None:
    raise NotImplementedError("0003 drops columns; restore a backup to go back")
