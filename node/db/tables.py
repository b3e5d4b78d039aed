"""SQLAlchemy 2 tables. The schema is created by the Alembic migrations in ``migrations/``;
a test checks the two agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

UID = String(64)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON}


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    # Patient identity lives in the database only; logs carry UIDs, never these.
    patient_id: Mapped[str] = mapped_column(String(64), unique=True)  # LO: 64 characters


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    # Index values sized to their VRs (SH 16, DA 8); intake clips a non-conforming longer
    # value to fit, the stored file keeps it whole.
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    state: Mapped[str] = mapped_column(String(32), index=True)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    # Set (and kept) once any instance matched the urgency rule; its jobs are claimed first.
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None]
    series_description: Mapped[str] = mapped_column(String(64), default="")
    # The acquisition attributes the role classifier reads (SeriesAttributes fields).
    attributes: Mapped[dict[str, Any]]
    role: Mapped[str | None] = mapped_column(String(16))
    role_reason: Mapped[str | None] = mapped_column(Text)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None]
    path: Mapped[str] = mapped_column(Text)  # relative to the storage root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        # The database itself allows one active and one shadow version at most.
        Index("uq_model_versions_one_active", "active", unique=True,
              sqlite_where=text("active"), postgresql_where=text("active")),
        Index("uq_model_versions_one_shadow", "shadow", unique=True,
              sqlite_where=text("shadow"), postgresql_where=text("shadow")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # A shadow version runs beside the active one on live studies; its results are never sent.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    registered_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # One run per study, model version and run number; a late arrival adds run n + 1.
        UniqueConstraint("study_id", "model_version_id", "run"),
        # The claim order: state, then priority (lower first), then age.
        Index("ix_jobs_claim_order", "state", "priority", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    run: Mapped[int] = mapped_column(Integer, default=1)
    # Lower is claimed first (node.domain.priority): urgent 0, routine 1.
    priority: Mapped[int] = mapped_column(Integer, default=1)
    # The run whose results this one replaces (late arrivals), if any.
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    # A shadow run (a candidate model version): results kept for comparison, never exported.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # The claim: which worker holds the job and until when; an expired lease is claimable.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    not_before: Mapped[datetime | None]  # a retry waits until then
    # Timings of the last run in seconds, for `jobs show` and bench/.
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Lesions found by class ({"FCI": n, "LACI": m, "UNCLASSIFIED": k}), once it has run.
    findings: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ResultObject(Base):
    __tablename__ = "result_objects"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # SEG, SR, GSPS or SC
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class NodeIdentityRow(Base):
    """The installation as the results it makes name it (Device Observer UID, Device Serial
    Number): one row, made on first start and never changed."""

    __tablename__ = "node_identity"
    id: Mapped[int] = mapped_column(primary_key=True)  # always 1
    device_uid: Mapped[str] = mapped_column(UID)
    serial_number: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class Delivery(Base):
    """One result object to one destination: a small queue of its own (node.domain.delivery)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("result_object_id", "destination"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    result_object_id: Mapped[int] = mapped_column(ForeignKey("result_objects.id"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # pending, delivered or dead
    status: Mapped[int | None]  # DICOM status of the last C-STORE or STOW-RS response
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    # A pending delivery is due from then; a claimed one is pushed ahead by the claim's lease.
    next_attempt_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Append-only: rows are inserted, never updated or deleted. Each row is a link of a hash
    chain (node.domain.audit_chain) whose head is :class:`AuditChainHead`."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_study", "study_instance_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    # Position in the chain (1, 2, ...), the previous event's hash and this event's hash.
    chain_seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    job_id: Mapped[int | None] = mapped_column(index=True)
    model_version: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[dict[str, Any]]


class AuditChainHead(Base):
    """The one row (id 1) that ends the audit chain: how many events it holds and the last
    hash. Appending locks it, so events chain in commit order; a deleted tail shows against it."""

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(primary_key=True)
    length: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
