import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from models.package import default_package_dir
from node.db.engine import session_factory, upgrade
from node.db.tables import AuditEvent
from node.errors import ModelError
from node.services import registry


def copy_package(tmp_path: Path, version: str) -> Path:
    target = tmp_path / version
    shutil.copytree(default_package_dir(), target)
    manifest = target / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "', f'"version": "{version}-', 1))
    return target


def test_register_activate_rollback(engine: Engine, tmp_path: Path) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        first = registry.ensure_default(session, default_package_dir())
        assert first is not None and first.active
        second = registry.register(session, copy_package(tmp_path, "b"), "admin:test")
        assert not second.active
        registry.activate(session, second.name, second.version, "admin:test")
    with sessions.begin() as session:
        assert registry.active_version(session).version == second.version  # type: ignore[union-attr]
        registry.rollback(session, "admin:test")
    with sessions.begin() as session:
        active = registry.active_version(session)
        assert active is not None and active.version == first.version
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
        assert actions == ["model.registered", "model.activated", "model.registered",
                           "model.activated", "model.rolled_back"]
        actors = set(session.scalars(select(AuditEvent.actor)))
        assert "admin:test" in actors


def test_tampered_package_is_refused(engine: Engine, tmp_path: Path) -> None:
    upgrade(engine)
    package = copy_package(tmp_path, "t")
    with (package / "secondary.keras").open("ab") as stream:
        stream.write(b"tampered")
    with session_factory(engine).begin() as session, pytest.raises(ModelError, match="sha256"):
        registry.register(session, package, "admin:test")
