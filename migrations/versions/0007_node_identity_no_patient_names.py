"""The installation's identity in its results: a Device Observer UID and a serial number made
once per node (issue 23), instead of a Device UID shared by every installation of a model.
Patients' names are no longer stored: the node never reads them.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_uid", sa.String(64), nullable=False),
        sa.Column("serial_number", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_node_identity"),
    )
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("patient_name")


def downgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("patient_name", sa.String(324), nullable=False,
                                   server_default=""))
    op.drop_table("node_identity")
