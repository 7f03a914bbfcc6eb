"""The Client-FD API's tables: pushers, their key generations, channel states, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pushers",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("pushkey", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("app_display_name", sa.String(256), nullable=False),
        sa.Column("device_display_name", sa.String(256), nullable=False),
        sa.Column("profile_tag", sa.String(256), nullable=True),
        sa.Column("lang", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("pushkey_ts", sa.BigInteger, nullable=False),
        sa.Column("encryption_method", sa.String(32), nullable=True),
        sa.Column("key_identifier", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pushers"),
        sa.UniqueConstraint(
            "user_id", "app_id", "pushkey", name="uq_pushers_user_id_app_id_pushkey"
        ),
    )
    op.create_index("ix_pushers_app_id_pushkey", "pushers", ["app_id", "pushkey"])
    op.create_index("ix_pushers_user_id_pushkey", "pushers", ["user_id", "pushkey"])
    op.create_table(
        "pusher_keys",
        sa.Column("pusher_id", _ID, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("material", sa.LargeBinary, nullable=False),
        sa.ForeignKeyConstraint(
            ["pusher_id"],
            ["pushers.id"],
            name="fk_pusher_keys_pusher_id_pushers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pusher_id", "period", name="pk_pusher_keys"),
    )
    op.create_table(
        "channel_states",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("pushkey", sa.String(512), nullable=False),
        sa.Column("channel_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "pushkey", "channel_id", name="pk_channel_states"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("pushkey_hash", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_user_id_at", "audit_log", ["user_id", "at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("channel_states")
    op.drop_table("pusher_keys")
    op.drop_index("ix_pushers_user_id_pushkey", table_name="pushers")
    op.drop_index("ix_pushers_app_id_pushkey", table_name="pushers")
    op.drop_table("pushers")
