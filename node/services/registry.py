"""Model versions: register (verified against the manifest, loaded and smoke-tested),
activate, roll back, shadow, verify.

Exactly one version is active at a time and at most one runs in shadow beside it; every change
is audited with who made it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.package import (
    MANIFEST_NAME,
    PackageError,
    default_package_dir,
    read_manifest,
    verify_package,
)
from node.config import ModelSettings
from node.db.tables import AuditEvent, Job, ModelVersion, utcnow
from node.errors import ModelError
from node.results.identity import ModelIdentity
from node.services import audit

if TYPE_CHECKING:  # the smoke test loads TensorFlow; callers that may, pass it in
    from models.smoke import SmokeResult

SmokeTest = Callable[[Path], "SmokeResult"]
# What registration records when it ran no smoke test (the bundled package at first start, in
# a process that may not import TensorFlow): the first worker to load it runs it then.
SMOKE_NOT_RUN = "not run at registration; run when a worker first loads it"


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


def find_version(session: Session, name: str, version_text: str) -> ModelVersion:
    version = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version_text)
    )
    if version is None:
        raise ModelError(f"{name} {version_text} is not registered")
    return version


def shadow_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.shadow.is_(True)))


def stored_package(store: Path, package_dir: Path, manifest_sha256: str) -> Path:
    """Copy the package's manifest and the files it lists into the content-addressed model
    store (``store/<manifest sha256>``; written once, then read-only) and return that folder.
    An existing folder is reused only when it verifies."""
    target = store / manifest_sha256
    if target.is_dir():
        verify_registered(target, manifest_sha256)
        return target
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest_sha256[:12]}-", dir=store))
    try:
        manifest = read_manifest(package_dir)
        for name in [MANIFEST_NAME, *sorted(manifest.files)]:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_dir / name, staging / name)
        for card in package_dir.glob("*.md"):  # the model card travels with it
            shutil.copyfile(card, staging / card.name)
        verify_registered(staging, manifest_sha256)
        for path in staging.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def verify_registered(package_dir: Path, manifest_sha256: str) -> None:
    """Check a registered package before it runs: its manifest is the one recorded at
    registration (``manifest_sha256``) and every file it lists matches; else
    :class:`ModelError`."""
    try:
        recorded = hashlib.sha256((package_dir / MANIFEST_NAME).read_bytes()).hexdigest()
        if recorded != manifest_sha256:
            raise PackageError(f"manifest changed since registration (sha256 {recorded}, "
                               f"registered {manifest_sha256})")
        verify_package(package_dir)
    except (PackageError, OSError) as error:
        raise ModelError(f"{package_dir} is not the package that was registered: {error}") from error


def register(
    session: Session, package_dir: Path, actor: str, smoke_test: SmokeTest | None = None,
    store: Path | None = None,
) -> ModelVersion:
    """Verify the package's files against its manifest, load its networks and run the smoke
    test (when ``smoke_test`` is given), copy it into the model ``store`` (see
    :func:`stored_package`; None: it is recorded where it is), then record it, inactive. Any
    failed step refuses the package with :class:`ModelError` and records nothing."""
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
    smoke = SMOKE_NOT_RUN
    if smoke_test is not None:
        try:
            result = smoke_test(package_dir)
        except Exception as error:  # a package whose networks do not load is refused
            raise ModelError(f"cannot register {package_dir}: networks do not load or run: "
                             f"{type(error).__name__}: {error}") from error
        if not result.passed:
            raise ModelError(f"cannot register {package_dir}: smoke test failed: {result.detail}")
        smoke = result.detail
    manifest_sha256 = hashlib.sha256((package_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    if store is not None:
        try:
            package_dir = stored_package(store.resolve(), package_dir, manifest_sha256)
        except (ModelError, PackageError, OSError) as error:
            raise ModelError(f"cannot copy {package_dir} into the model store: {error}") from error
    version = ModelVersion(
        name=manifest.name,
        version=manifest.version,
        path=str(package_dir),
        manifest_sha256=manifest_sha256,
        manifest=asdict(manifest),
        active=False,
        registered_at=utcnow(),
        activated_at=None,
    )
    session.add(version)
    session.flush()
    audit.record(
        session, "model.registered", actor=actor, model_version=f"{version.name} {version.version}",
        path=str(package_dir), manifest_sha256=version.manifest_sha256, smoke_test=smoke,
    )
    return version


def activate(session: Session, name: str, version_text: str, actor: str) -> ModelVersion:
    """Make the version active (a shadow version is thereby promoted and leaves shadow)."""
    version = find_version(session, name, version_text)
    if version.active:
        raise ModelError(f"{name} {version_text} is already active")
    return _make_active(session, version, actor, "model.activated",
                        promoted_from_shadow=version.shadow)


def start_shadow(session: Session, name: str, version_text: str, actor: str) -> ModelVersion:
    """Run the version beside the active one on every newly stable study (results kept for
    :func:`node.services.shadow.compare`, never exported). Replaces any earlier shadow."""
    version = find_version(session, name, version_text)
    if version.active:
        raise ModelError(f"{name} {version_text} is the active version; shadow a candidate")
    previous = shadow_version(session)
    session.execute(update(ModelVersion).values(shadow=False))
    version.shadow = True
    session.flush()
    audit.record(session, "model.shadow_started", actor=actor, model_version=_label(version),
                 replaced=None if previous is None or previous.id == version.id
                 else _label(previous))
    return version


def stop_shadow(session: Session, actor: str) -> ModelVersion:
    version = shadow_version(session)
    if version is None:
        raise ModelError("no model version is in shadow mode")
    version.shadow = False
    session.flush()
    audit.record(session, "model.shadow_stopped", actor=actor, model_version=_label(version))
    return version


@dataclass(frozen=True)
class VerifiedVersion:
    name: str
    version: str
    path: str
    ok: bool
    detail: str


def verify_all(session: Session, actor: str) -> list[VerifiedVersion]:
    """Re-check every registered version's files on disk against its manifest and against the
    manifest hash recorded at registration; one audit row with the outcome."""
    results = []
    for version in list_versions(session):
        path = Path(version.path)
        try:
            verify_registered(path, version.manifest_sha256)
            ok, detail = True, "all files match"
        except ModelError as error:
            ok, detail = False, str(error)
        results.append(VerifiedVersion(version.name, version.version, str(path), ok, detail))
    audit.record(session, "model.verified", actor=actor,
                 checked=len(results), failed=[f"{r.name} {r.version}: {r.detail}"
                                               for r in results if not r.ok])
    return results


def _label(version: ModelVersion) -> str:
    return f"{version.name} {version.version}"


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
    version.shadow = False
    version.activated_at = utcnow()
    session.flush()
    audit.record(
        session, action, actor=actor, model_version=f"{version.name} {version.version}", **details
    )
    return version


def bundled_package(settings: ModelSettings) -> Path:
    """The default package: ``models.default_package``, else the one committed with the source."""
    return settings.default_package or default_package_dir()


def ensure_default(session: Session, package_dir: Path,
                   store: Path | None = None) -> ModelVersion | None:
    """On first start, register (into ``store``, see :func:`register`) and activate the
    bundled package; otherwise do nothing."""
    if session.scalar(select(ModelVersion.id).limit(1)) is not None:
        return None
    version = register(session, package_dir, actor=audit.NODE_ACTOR, store=store)
    return _make_active(session, version, audit.NODE_ACTOR, "model.activated", reason="first start")


def is_bundled(version: ModelVersion, bundled_package: Path) -> bool:
    """Whether ``version`` is the package shipped with the node (same manifest bytes): a
    synthetic-trained model, never meant for patients."""
    try:
        bundled = hashlib.sha256((bundled_package / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return False
    return bundled == version.manifest_sha256


def activated_at_first_start(session: Session, version: ModelVersion) -> bool:
    """Whether the node itself (not an administrator) made ``version`` active: its latest
    activation in the audit trail is the first start's."""
    actor = session.scalar(
        select(AuditEvent.actor)
        .where(AuditEvent.model_version == _label(version),
               AuditEvent.action.in_(("model.activated", "model.rolled_back")))
        .order_by(AuditEvent.id.desc()).limit(1))
    return actor == audit.NODE_ACTOR


def smoke_test_due(session: Session, version: ModelVersion) -> bool:
    """Whether ``version`` has not passed a smoke test yet: registered without one, and no
    worker has recorded one since (``model.smoke_tested``)."""
    label = _label(version)
    tested = session.scalar(select(AuditEvent.id).where(
        AuditEvent.model_version == label, AuditEvent.action == "model.smoke_tested").limit(1))
    if tested is not None:
        return False
    registered = session.scalar(select(AuditEvent.details).where(
        AuditEvent.model_version == label, AuditEvent.action == "model.registered")
        .order_by(AuditEvent.id.desc()).limit(1))
    # Registrations before this rule wrote "not run (bundled package, ...)".
    return registered is None or str(registered.get("smoke_test", "")).startswith("not run")


def jobs_by_state(session: Session, version: ModelVersion) -> dict[str, int]:
    """How many of ``version``'s jobs are in each state."""
    rows = session.execute(select(Job.state, func.count()).where(Job.model_version_id == version.id)
                           .group_by(Job.state)).all()
    return {state: count for state, count in rows}
