"""Pushkeys sealed at rest, and identity keys that outlive the master key.

From here every ``pushkey`` column (``pushers``, ``channel_states``) holds the pushkey's keyed
index and ``audit_log.pushkey_hash`` the same index; the pushkey itself is only in
``pushers.pushkey_sealed``, sealed under the master key. Migrations have no master key, so the
rows already stored are converted by the data step ``sealed-pushkeys`` (``fdpush migrate`` and
every service start run it after the migrations).

``keyring`` keeps the identity keys (of the pseudonyms and pushkey indexes) sealed under the
master key, so that a rotation of the master key keeps them: the ids behind stored pseudonyms
are not known, so pseudonyms cannot be computed anew under a new key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pushers", sa.Column("pushkey_sealed", sa.LargeBinary, nullable=True))
    op.create_table(
        "keyring",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("material", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_keyring"),
    )


def downgrade() -> None:
    op.drop_table("keyring")
    with op.batch_alter_table("pushers") as batch:
        batch.drop_column("pushkey_sealed")
