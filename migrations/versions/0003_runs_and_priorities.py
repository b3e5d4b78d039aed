"""Runs (late arrivals re-run a study; the new run supersedes the old) and priorities.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("supersedes_job_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_jobs_supersedes_job_id_jobs", "jobs", ["supersedes_job_id"], ["id"])
        batch.drop_constraint("uq_jobs_study_id", type_="unique")
        batch.create_unique_constraint("uq_jobs_study_id", ["study_id", "model_version_id", "run"])
        batch.create_index("ix_jobs_claim_order", ["state", "priority", "id"])
    # The defaults served existing rows; new rows get theirs from the application.
    with op.batch_alter_table("studies") as batch:
        batch.alter_column("urgent", server_default=None)
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("run", server_default=None)
        batch.alter_column("priority", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_claim_order")
        batch.drop_constraint("uq_jobs_study_id", type_="unique")
        batch.create_unique_constraint("uq_jobs_study_id", ["study_id", "model_version_id"])
        batch.drop_constraint("fk_jobs_supersedes_job_id_jobs", type_="foreignkey")
        batch.drop_column("supersedes_job_id")
        batch.drop_column("priority")
        batch.drop_column("run")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("urgent")
