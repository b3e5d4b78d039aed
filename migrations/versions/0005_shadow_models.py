"""Shadow mode: a candidate model version runs beside the active one; its jobs never export.
Jobs record their findings (lesions by class) so runs can be compared.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("findings", sa.JSON(), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("shadow", server_default=None)
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("shadow", server_default=None)
    for column in ("active", "shadow"):
        op.create_index(f"uq_model_versions_one_{column}", "model_versions", [column], unique=True,
                        sqlite_where=sa.text(column), postgresql_where=sa.text(column))


def downgrade() -> None:
    for column in ("active", "shadow"):
        op.drop_index(f"uq_model_versions_one_{column}", table_name="model_versions")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("findings")
        batch.drop_column("shadow")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("shadow")
