"""Model versions: register (verified against the manifest), activate, roll back.

Exactly one version is active at a time; every change is audited with who made it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.package import MANIFEST_NAME, PackageError, verify_package
from node.db.tables import ModelVersion, utcnow
from node.errors import ModelError
from node.results.identity import ModelIdentity
from node.services import audit


def identity_of(version: ModelVersion) -> ModelIdentity:
    return ModelIdentity(
        name=version.name,
        version=version.version,
        manifest_sha256=version.manifest_sha256,
        trained_on=str(version.manifest.get("trained_on", "")),
    )


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)))


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def register(session: Session, package_dir: Path, actor: str) -> ModelVersion:
    """Verify the package's files against its manifest and record it (inactive)."""
    package_dir = package_dir.resolve()
    try:
        manifest = verify_package(package_dir)
    except PackageError as error:
        raise ModelError(f"cannot register {package_dir}: {error}") from error
    existing = session.scalar(
        select(ModelVersion).where(
            ModelVersion.name == manifest.name, ModelVersion.version == manifest.version
        )
    )
    if existing is not None:
        raise ModelError(f"{manifest.name} {manifest.version} is already registered")
    manifest_bytes = (package_dir / MANIFEST_NAME).read_bytes()
    version = ModelVersion(
        name=manifest.name,
        version=manifest.version,
        path=str(package_dir),
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        manifest=asdict(manifest),
        active=False,
        registered_at=utcnow(),
        activated_at=None,
    )
    session.add(version)
    session.flush()
    audit.record(
        session, "model.registered", actor=actor, model_version=f"{version.name} {version.version}",
        path=str(package_dir), manifest_sha256=version.manifest_sha256,
    )
    return version


def activate(session: Session, name: str, version_text: str, actor: str) -> ModelVersion:
    version = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version_text)
    )
    if version is None:
        raise ModelError(f"{name} {version_text} is not registered")
    return _make_active(session, version, actor, "model.activated")


def rollback(session: Session, actor: str) -> ModelVersion:
    """Re-activate the version that was active before the current one."""
    current = active_version(session)
    previous = session.scalar(
        select(ModelVersion)
        .where(ModelVersion.active.is_(False), ModelVersion.activated_at.is_not(None))
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )
    if previous is None:
        raise ModelError("no previously active model version to roll back to")
    return _make_active(
        session, previous, actor, "model.rolled_back",
        replaced=None if current is None else f"{current.name} {current.version}",
    )


def _make_active(
    session: Session, version: ModelVersion, actor: str, action: str, **details: Any
) -> ModelVersion:
    # One statement deactivates all, the next activates one: in one transaction, so readers
    # never see two active versions.
    session.execute(update(ModelVersion).values(active=False))
    version.active = True
    version.activated_at = utcnow()
    session.flush()
    audit.record(
        session, action, actor=actor, model_version=f"{version.name} {version.version}", **details
    )
    return version


def ensure_default(session: Session, package_dir: Path) -> ModelVersion | None:
    """On first start, register and activate the bundled package; otherwise do nothing."""
    if session.scalar(select(ModelVersion.id).limit(1)) is not None:
        return None
    version = register(session, package_dir, actor=audit.NODE_ACTOR)
    return _make_active(session, version, audit.NODE_ACTOR, "model.activated", reason="first start")
