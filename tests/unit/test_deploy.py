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


def test_images_run_as_non_root_with_an_http_health_check() -> None:
    default_port = load_settings(None, {}).metrics.port
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DEPLOY / name).read_text()
        assert "\nUSER lacuna\n" in text and "--uid 999" in text
        assert f"http://127.0.0.1:{default_port}/health" in text
    assert "FROM tensorflow/tensorflow:" in (DEPLOY / "Dockerfile.gpu").read_text()


def test_kubernetes_probes_use_http_and_pods_are_scraped() -> None:
    default_port = load_settings(None, {}).metrics.port
    for name in ("scp.yaml", "worker-gpu.yaml", "worker-cpu.yaml"):
        deployment = documents(DEPLOY / "kubernetes" / name)[0]
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(default_port)
        [container] = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == default_port
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
        if name.startswith("worker"):
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/models"]["readOnly"] is True


def test_compose_scrapes_every_lacuna_service() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "prometheus" in compose["services"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    assert set(discovery["names"]) == {"scp", "worker", "worker-gpu"}
    assert discovery["port"] == load_settings(None, {}).metrics.port


def test_systemd_units_outlast_the_shutdown_grace() -> None:
    grace = load_settings(None, {}).worker.shutdown_grace_seconds
    for unit in ("lacuna.service", "lacuna-worker@.service"):
        text = (DEPLOY / "systemd" / unit).read_text()
        stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
        assert stop > grace
        assert "User=lacuna" in text and "ExecStart=/opt/lacuna/bin/lacuna " in text
