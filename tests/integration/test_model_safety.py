"""Nobody sends a synthetic model's results to a real PACS without knowing it (issue 23):
the bundled model is marked in `lacuna models list` and warned about while it is active and a
destination is configured; `models.require_registered` runs nothing until an administrator has
registered and activated a model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from harness.peers import local_settings
from models.package import default_package_dir
from node.app import open_node_database, synthetic_model_warning
from node.cli import EXIT_OK, main
from node.config import ModelSettings
from node.errors import ConfigError
from node.services import audit, registry


def test_the_bundled_model_is_marked_and_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = local_settings(tmp_path, 11112)  # one destination, "pacs"
    database = open_node_database(settings)  # first start: the bundled model, active
    warning = synthetic_model_warning(settings, database.sessions)
    assert warning is not None and "synthetic-trained" in warning and "pacs" in warning
    assert "models.require_registered" in warning
    assert synthetic_model_warning(replace(settings, destinations=()), database.sessions) is None

    config = tmp_path / "lacuna.toml"
    config.write_text(f'[storage]\nroot = "{settings.storage.root}"\n'
                      f'[database]\nurl = "{settings.database.url}"\n')
    monkeypatch.setenv("LACUNA_CONFIG", str(config))
    capsys.readouterr()
    assert main(["models", "list"]) == EXIT_OK
    assert "BUNDLED, synthetic-trained: not for clinical use" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == EXIT_OK
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["bundled_synthetic"] is True and listed["active"] is True

    # An administrator's own model ends the warning.
    own = tmp_path / "own"
    shutil.copytree(default_package_dir(), own)
    manifest = own / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "', '"version": "own-', 1))
    with database.sessions.begin() as session:
        version = registry.register(session, own, "admin:test")
        registry.activate(session, version.name, version.version, "admin:test")
    assert synthetic_model_warning(settings, database.sessions) is None


def test_require_registered_runs_nothing_until_an_administrator_activates(tmp_path: Path) -> None:
    strict = local_settings(tmp_path, 11112, models=ModelSettings(require_registered=True))
    database = open_node_database(strict)
    with database.sessions.begin() as session:
        assert registry.list_versions(session) == []  # nothing registered, nothing runs
    with database.sessions.begin() as session:
        version = registry.register(session, default_package_dir(), audit.admin_actor())
        registry.activate(session, version.name, version.version, audit.admin_actor())
    open_node_database(strict)  # an administrator's activation is accepted

    # A node that activated the bundled model itself before the setting was turned on refuses
    # to start under it, naming the key.
    lenient_dir = tmp_path / "lenient"
    lenient_dir.mkdir()
    open_node_database(local_settings(lenient_dir, 11112))
    with pytest.raises(ConfigError, match="models.require_registered"):
        open_node_database(local_settings(lenient_dir, 11112,
                                          models=ModelSettings(require_registered=True)))
