"""The cascade: the tier whose answer failed the cheap check, and what that attempt cost.

Revision 0004. Existing rows: no escalation, nothing charged for one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("escalated_from", sa.String(), nullable=True))
        batch.add_column(sa.Column("cascade_saved_nanousd", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("cascade_saved_nanousd")
        batch.drop_column("escalated_from")
