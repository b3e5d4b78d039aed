"""Deliveries become their own queue: each (result object, destination) row is pending until
delivered, retried with backoff (next_attempt_at), and dead-lettered after the last attempt.
Rows an older node left as "failed" are pending again.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])
    op.execute("UPDATE deliveries SET state = 'pending', next_attempt_at = updated_at "
               "WHERE state = 'failed'")


def downgrade() -> None:
    op.execute("UPDATE deliveries SET state = 'failed' WHERE state IN ('pending', 'dead')")
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("next_attempt_at")
