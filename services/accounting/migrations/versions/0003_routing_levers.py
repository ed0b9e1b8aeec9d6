"""Routing, and the levers split in order.

The counterfactual's tier, the routing decision, a fallback taken, each lever's saving, and the
shadow policies' picks in their own table.

Revision 0003. Existing rows get the values of a request that met no lever: their saving, if any,
stays in ``reference_nanousd - cost_nanousd`` (priced then on the fixed reference tier) and in
``cache_saved_nanousd``, unsplit.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LEVERS = ("routing_saved_nanousd", "fallback_saved_nanousd", "prefix_saved_nanousd", "bulk_saved_nanousd")


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("counterfactual_tier", sa.String(), nullable=True))
        batch.add_column(sa.Column("route_policy", sa.String(), nullable=True))
        batch.add_column(sa.Column("route_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("route_threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("fallback_from", sa.String(), nullable=True))
        for column in _LEVERS:
            batch.add_column(sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "usage_route_shadow",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("cost_nanousd", sa.BigInteger(), nullable=True),
        sa.Column("live_cost_nanousd", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["request_id"], ["usage_records.request_id"]),
        sa.PrimaryKeyConstraint("request_id", "policy"),
    )


def downgrade() -> None:
    op.drop_table("usage_route_shadow")
    with op.batch_alter_table("usage_records") as batch:
        for column in (*reversed(_LEVERS), "fallback_from", "route_threshold", "route_score", "route_policy",
                       "counterfactual_tier"):
            batch.drop_column(column)
