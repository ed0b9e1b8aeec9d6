"""The bulk job (batch id) a request was an item of, indexed: a job's totals are read by it.

Revision 0005. Existing rows: no job (they were requests on their own, or items recorded before
the ledger kept the job).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("job_id", sa.String(), nullable=True))
        batch.create_index("ix_usage_records_job_id", ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index("ix_usage_records_job_id")
        batch.drop_column("job_id")
