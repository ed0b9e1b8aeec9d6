"""The cache lever's columns: what a hit served and what it saved; shadow lookups.

Revision 0002. Existing rows get the values a request that never met the cache has.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("cache_similarity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cache_source_tier", sa.String(), nullable=True))
        batch.add_column(sa.Column("cache_saved_nanousd", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cache_shadow", sa.String(), nullable=False, server_default="none"))
        batch.add_column(sa.Column("cache_shadow_similarity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cache_shadow_match", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for column in ("cache_shadow_match", "cache_shadow_similarity", "cache_shadow", "cache_saved_nanousd",
                       "cache_source_tier", "cache_similarity"):
            batch.drop_column(column)
