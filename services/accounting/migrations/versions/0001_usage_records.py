"""usage_records, as Base.metadata.create_all made it before migrations.

Revision 0001, the first. A database that already holds this table without an ``alembic_version``
is stamped with this revision instead of running it (``services.accounting.migrate``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("priority", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("queue_seconds", sa.Float(), nullable=False),
        sa.Column("engine_seconds", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(), nullable=False),
        sa.Column("cache_outcome", sa.String(), nullable=False),
        # The models' UtcDateTime stores this type (timestamptz on PostgreSQL).
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cost_nanousd", sa.BigInteger(), nullable=False),
        sa.Column("reference_nanousd", sa.BigInteger(), nullable=False),
        sa.Column("priced", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_usage_records_occurred_at", "usage_records", ["occurred_at"])
    op.create_index("ix_usage_records_tenant_occurred", "usage_records", ["tenant", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_tenant_occurred", table_name="usage_records")
    op.drop_index("ix_usage_records_occurred_at", table_name="usage_records")
    op.drop_table("usage_records")
