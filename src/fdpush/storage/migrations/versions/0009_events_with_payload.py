"""An index over the events that still hold a payload, in id order.

Forgetting the payloads no longer needed was one ``UPDATE`` over every event older than now:
after a backlog of 200,000 notifications it rewrote 129,500 rows in one 2.8 s transaction, and
every pass of the pruning walked all events kept for the outbox's retention to find the few
with a payload. With this index the pruning walks only the events that still have one, in id
order, and forgets a chunk of 5,000 per transaction, each chunk from where the last stopped.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SEALED = sa.text("payload IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_events_sealed", "events", ["id"], postgresql_where=_SEALED, sqlite_where=_SEALED
    )


def downgrade() -> None:
    op.drop_index("ix_events_sealed", table_name="events")
