"""The deployment files agree with the code: their settings load, every LACUNA_* variable they
set is a real key, and the orchestrators wait longer than a worker's shutdown grace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from node.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_config_map_is_valid_settings(tmp_path: Path) -> None:
    [config_map] = documents(DEPLOY / "kubernetes" / "config.yaml")
    toml = tmp_path / "lacuna.toml"
    toml.write_text(config_map["data"]["lacuna.toml"])
    settings = load_settings(toml, {})
    assert settings.worker.shutdown_grace_seconds == 60


def test_kubernetes_workers_outlast_their_shutdown_grace() -> None:
    for name, gpus in (("worker-gpu.yaml", 1), ("worker-cpu.yaml", 0)):
        [deployment] = documents(DEPLOY / "kubernetes" / name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > 60
        [container] = pod["containers"]
        assert container["args"] == ["worker"]
        assert container["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus


def test_compose_environment_names_real_keys() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "orthanc", "scp", "worker"} <= set(services)
    environment: dict[str, str] = {}
    for service in ("scp", "worker", "worker-gpu"):
        environment.update(services[service]["environment"])
    for line in (DEPLOY / "compose.env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            environment[key] = value
    lacuna = {
        key: re.sub(r"\$\{[^}]*\}", "secret", value)
        for key, value in environment.items() if key.startswith("LACUNA_")
    }
    load_settings(None, lacuna)  # an unknown key or a bad value raises, naming it
    assert services["worker"]["stop_grace_period"] == "90s"
