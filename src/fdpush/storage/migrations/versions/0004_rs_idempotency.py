"""The RS API's Idempotency-Key receipts, one per technical user and key; the data steps done.

``data_steps`` records steps on the data that need the master key, which migrations do not have
(the service runs them at start): ``user-pseudonyms``, the replacement of every stored user id
by its keyed pseudonym.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rs_idempotency",
        sa.Column("client", sa.String(255), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("notification_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("accepted_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("client", "key", name="pk_rs_idempotency"),
    )
    op.create_index("ix_rs_idempotency_created_at", "rs_idempotency", ["created_at"])
    op.create_table(
        "data_steps",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("done_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_data_steps"),
    )


def downgrade() -> None:
    op.drop_table("data_steps")
    op.drop_index("ix_rs_idempotency_created_at", table_name="rs_idempotency")
    op.drop_table("rs_idempotency")
