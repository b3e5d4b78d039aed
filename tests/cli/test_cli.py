"""The admin CLI, called in-process with a temporary configuration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.package import default_package_dir
from node.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "lacuna.toml"
    config.write_text(
        f'[storage]\nroot = "{tmp_path / "storage"}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "lacuna.db"}"\n'
    )
    monkeypatch.setenv("LACUNA_CONFIG", str(config))
    return tmp_path


def test_db_upgrade_and_downgrade(configured: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == EXIT_OK
    assert "schema revision: 0007" in capsys.readouterr().out
    assert main(["db", "downgrade", "base"]) == EXIT_OK
    assert "schema revision: none" in capsys.readouterr().out


def test_models_register_activate_rollback(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "rollback"]) == EXIT_REFUSED  # nothing registered yet
    assert "no previously active" in capsys.readouterr().err
    assert main(["models", "register", str(default_package_dir())]) == EXIT_OK
    copy = configured / "candidate"
    shutil.copytree(default_package_dir(), copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "', '"version": "rc-', 1))
    assert main(["models", "register", str(copy)]) == EXIT_OK
    capsys.readouterr()
    name = "lacuna-synthetic"
    assert main(["--json", "models", "list"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 2 and not any(entry["active"] for entry in listed)
    versions = [entry["version"] for entry in listed]
    assert main(["models", "activate", name, versions[0]]) == EXIT_OK
    assert main(["models", "activate", name, versions[1]]) == EXIT_OK
    assert main(["models", "rollback"]) == EXIT_OK
    assert f"rollback: {name} {versions[0]} (active)" in capsys.readouterr().out
    assert main(["audit", "list", "--action", "model.rolled_back"]) == EXIT_OK
    assert "admin:" in capsys.readouterr().out


def test_register_refuses_a_folder_without_manifest(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "register", str(configured)]) == EXIT_REFUSED
    assert "no manifest.json" in capsys.readouterr().err


def test_calibrate_refuses_a_wrong_target_before_loading_anything(
    configured: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.inference import TwoStageEngine

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the target was checked")

    monkeypatch.setattr(TwoStageEngine, "load", no_load)
    source = json.loads((default_package_dir() / "manifest.json").read_text())["version"]
    out = configured / "calibrated"
    assert main(["calibrate", "--out", str(out), "--version", source]) == EXIT_USAGE
    assert f"needs a new version, not {source}" in capsys.readouterr().err
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    assert main(["calibrate", "--out", str(out), "--version", "9.9.9"]) == EXIT_USAGE
    assert "is not empty" in capsys.readouterr().err
    assert main(["calibrate", "--out", str(out / "manifest.json"), "--version", "9.9.9"]) == EXIT_USAGE
    assert "is a file, not a folder" in capsys.readouterr().err
    # A folder that is no package: refused with the reason, not a traceback.
    assert main(["calibrate", "--model", str(configured), "--out", str(configured / "x"),
                 "--version", "9.9.9"]) == EXIT_REFUSED
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_before_or_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    config = tmp_path / "lacuna.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path / "storage"}"\n'
                      f'[database]\nurl = "sqlite:///{tmp_path / "typed.db"}"\n')
    monkeypatch.delenv("LACUNA_CONFIG", raising=False)
    typed = ["--config", str(config)]
    argv = [*typed, "db", "upgrade"] if where == "before" else ["db", "upgrade", *typed]
    assert main(argv) == EXIT_OK
    assert (tmp_path / "typed.db").exists()  # the file named on the command line was used
    assert main(["models", "list", "--json", *typed]) == EXIT_OK
    assert isinstance(json.loads(capsys.readouterr().out.splitlines()[-1]), (list, dict))


def test_bad_configuration_exits_with_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LACUNA_SCP_PORT", "not-a-port")
    assert main(["jobs", "list"]) == EXIT_CONFIG
    assert "scp.port" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["show", "retry", "cancel"])
def test_jobs_unknown_job(
    configured: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    assert main(["jobs", action, "42"]) == EXIT_REFUSED
    assert "no job 42" in capsys.readouterr().err


def test_synth_writes_a_study(configured: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(configured / "out"), "--subjects", "1", "--seed", "3"]) == EXIT_OK
    assert "48 instances" in capsys.readouterr().out
    assert len(list((configured / "out").rglob("*.dcm"))) == 48


def test_research_commands_are_lacuna_train_and_the_old_names_say_so(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main as train_main

    assert train_main(["synth", str(configured / "new"), "--seed", "3"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "48 instances" in captured.out and captured.err == ""
    assert main(["synth", str(configured / "old"), "--seed", "3"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "48 instances" in captured.out
    assert "`lacuna synth` is now `lacuna-train synth`" in captured.err
    with pytest.raises(SystemExit) as refused:  # the admin commands are not lacuna-train's
        train_main(["serve"])
    assert refused.value.code == EXIT_USAGE


def test_lacuna_train_is_installed() -> None:
    import subprocess
    import sys

    script = Path(sys.executable).with_name("lacuna-train")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "evaluate" in result.stdout and "serve" not in result.stdout


def candidate_package(configured: Path, version_prefix: str, **manifest_changes: object) -> Path:
    copy = configured / version_prefix
    shutil.copytree(default_package_dir(), copy)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = f"{version_prefix}-{manifest['version']}"
    manifest.update(manifest_changes)
    path.write_text(json.dumps(manifest))
    return copy


def test_register_refuses_a_package_that_fails_the_smoke_test(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Files intact, but a threshold no probability reaches: it finds no lesion at all.
    blind = candidate_package(configured, "blind", lesion_threshold=1.01)
    assert main(["models", "register", str(blind)]) == EXIT_REFUSED
    error = capsys.readouterr().err
    assert "smoke test failed" in error and "FCI at (100, 100) not found" in error
    assert main(["--json", "models", "list"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []  # nothing recorded


def test_verify_names_a_version_whose_files_changed_and_show_describes_one(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = candidate_package(configured, "rc")
    assert main(["models", "register", str(package)]) == EXIT_OK
    capsys.readouterr()
    assert main(["--json", "models", "list"]) == EXIT_OK
    [listed] = json.loads(capsys.readouterr().out)
    stored = Path(listed["path"])  # the content-addressed copy registration made
    assert stored.name == listed["manifest_sha256"] and stored != package
    with (package / "secondary.keras").open("ab") as weights:
        weights.write(b"tampered")  # the package registered from: not what runs
    assert main(["models", "verify"]) == EXIT_OK
    capsys.readouterr()
    (stored / "secondary.keras").chmod(0o644)
    with (stored / "secondary.keras").open("ab") as weights:
        weights.write(b"tampered")
    assert main(["--json", "models", "verify"]) == EXIT_FAILURE
    [result] = json.loads(capsys.readouterr().out)
    assert not result["ok"] and "secondary.keras: sha256" in result["detail"]
    version = result["version"]
    assert main(["--json", "models", "show", "lacuna-synthetic", version]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == version and "synthetic" in shown["intended_use"].lower()
    assert main(["models", "show", "lacuna-synthetic", "nope"]) == EXIT_REFUSED
    assert main(["audit", "list", "--action", "model.verified"]) == EXIT_OK
    assert "admin:" in capsys.readouterr().out


def test_destinations_list_and_echo_against_dcmtk_storescp(
    configured: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.peers import PACS_AE, free_port, start_storescp

    port, closed = free_port(), free_port()
    monkeypatch.setenv("LACUNA_DESTINATIONS", json.dumps([
        {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": port},
        {"name": "gone", "ae_title": "NOBODY", "host": "127.0.0.1", "port": closed},
    ]))
    pacs = start_storescp(configured / "pacs", port)
    try:
        assert main(["destinations", "list"]) == EXIT_OK
        listed = capsys.readouterr().out
        assert f"{PACS_AE}@127.0.0.1:{port}" in listed and f"127.0.0.1:{closed}" in listed
        assert "C-STORE" in listed and "SEG,SR" in listed
        assert main(["destinations", "echo", "pacs"]) == EXIT_OK
        assert "C-ECHO success" in capsys.readouterr().out
        assert main(["--json", "destinations", "echo"]) == EXIT_FAILURE  # one is down
        answers = {a["name"]: a for a in json.loads(capsys.readouterr().out)}
        assert answers["pacs"]["ok"] is True
        assert answers["gone"]["ok"] is False and "no answer" in answers["gone"]["detail"]
        assert main(["destinations", "echo", "nowhere"]) == 2
    finally:
        pacs.terminate()
        pacs.wait()
