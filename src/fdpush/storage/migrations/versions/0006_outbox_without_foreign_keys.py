"""The outbox's rows are written without foreign-key checks.

``notifications.event_id`` and ``notifications.pusher_id`` lose their foreign keys: checking
them cost PostgreSQL two lookups per queued notification (a trigger each, and a share lock on
the pusher's row), about as much as writing the row. What they gave is kept by the code:

- ``event_id``: an event and its notifications are written by one statement, and removed
  together (pruning and erasure delete the notifications first).
- ``pusher_id``: on PostgreSQL pusher ids come from a sequence and are never reused, so the id
  of a deleted pusher refers to nothing, which every reader already treats as "deregistered"
  (the worker fails such a notification; history, exports and the failure list show no
  pusher), as it did the NULL the foreign key wrote. SQLite gives the next pusher the highest
  id again once that pusher is deleted: there a trigger does what the foreign key did (a
  deleted pusher's notifications lose their ``pusher_id``), or a notification meant for a
  deregistered device would go to whichever device registered next.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_EVENT_FK = "fk_notifications_event_id_events"
_PUSHER_FK = "fk_notifications_pusher_id_pushers"
# SQLite reports the foreign keys of older databases without names: they get these.
_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    present = {fk["name"] for fk in sa.inspect(op.get_bind()).get_foreign_keys("notifications")}
    gone = [name for name in (_EVENT_FK, _PUSHER_FK) if name in present]
    if gone:
        with op.batch_alter_table("notifications", naming_convention=_NAMES) as batch:
            for name in gone:
                batch.drop_constraint(name, type_="foreignkey")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER IF NOT EXISTS notifications_unlink_deleted_pusher"
            " AFTER DELETE ON pushers BEGIN"
            " UPDATE notifications SET pusher_id = NULL WHERE pusher_id = OLD.id; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS notifications_unlink_deleted_pusher")
    # What the foreign keys would have done meanwhile, then the keys again.
    op.execute(
        "UPDATE notifications SET pusher_id = NULL WHERE pusher_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM pushers p WHERE p.id = notifications.pusher_id)"
    )
    op.execute(
        "DELETE FROM notifications"
        " WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = notifications.event_id)"
    )
    with op.batch_alter_table("notifications") as batch:
        batch.create_foreign_key(_EVENT_FK, "events", ["event_id"], ["id"], ondelete="CASCADE")
        batch.create_foreign_key(_PUSHER_FK, "pushers", ["pusher_id"], ["id"], ondelete="SET NULL")
