"""Tamper-evident audit trail: a hash chain over audit_events, ended by audit_chain_head.

Existing rows are chained in id order.

Revision ID: 0004
Revises: 0003
"""

from datetime import UTC

import sqlalchemy as sa
from alembic import op

from node.domain.audit_chain import GENESIS_HASH, HASHED_FIELDS, event_hash

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("chain_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_audit_events_chain_seq", ["chain_seq"])
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_chain_head"),
    )
    events = sa.table(
        "audit_events", sa.column("id", sa.Integer()),
        sa.column("occurred_at", sa.DateTime(timezone=True)), sa.column("details", sa.JSON()),
        *(sa.column(name) for name in HASHED_FIELDS if name not in ("occurred_at", "details")),
        sa.column("prev_hash"), sa.column("hash"),
    )
    connection = op.get_bind()
    seq, prev_hash = 0, GENESIS_HASH
    rows = connection.execute(sa.select(events).order_by(events.c.id)).mappings().all()
    for row in rows:
        seq += 1
        fields = {name: row[name] for name in HASHED_FIELDS if name != "chain_seq"}
        fields["chain_seq"] = seq
        occurred = fields["occurred_at"]
        fields["occurred_at"] = (occurred.replace(tzinfo=UTC) if occurred.tzinfo is None
                                 else occurred)
        digest = event_hash(prev_hash, fields)
        connection.execute(events.update().where(events.c.id == row["id"])
                           .values(chain_seq=seq, prev_hash=prev_hash, hash=digest))
        prev_hash = digest
    op.bulk_insert(head, [{"id": 1, "length": seq, "head_hash": prev_hash}])
    # Append-only in the database too: UPDATE and DELETE of audit rows are refused. Someone who
    # owns the schema can drop the trigger; the hash chain is what exposes that.
    if connection.dialect.name == "postgresql":
        op.execute("CREATE FUNCTION lacuna_audit_append_only() RETURNS trigger "
                   "LANGUAGE plpgsql AS $$ BEGIN "
                   "RAISE EXCEPTION 'audit_events is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE "
                   "ON audit_events FOR EACH ROW EXECUTE FUNCTION lacuna_audit_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_events_no_{event.lower()} BEFORE {event} "
                       "ON audit_events BEGIN "
                       "SELECT RAISE(ABORT, 'audit_events is append-only'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION lacuna_audit_append_only()")
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER audit_events_no_{event}")
    op.drop_table("audit_chain_head")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_chain_seq", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("chain_seq")
