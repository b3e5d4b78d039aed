"""Operating a node: /metrics, /health and /ready over HTTP during a real round trip, JSON
logs without patient identity, the audit chain intact afterwards, and low disk refused."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from harness.peers import free_port
from node.cli import EXIT_OK, main
from tests.conftest import wait_for
from tests.e2e.conftest import Pacs, listening, node_environment, spawn, storescu, terminate

pytestmark = pytest.mark.e2e

CANARY = {"PatientName": "CANARYSURNAME^CANARYGIVEN", "PatientID": "CANARY-ID-7319",
          "PatientBirthDate": "19230417"}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, ""


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels, exactly as exposed)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


def canary_study(source: Path, target: Path) -> Path:
    """A copy of the synthetic study whose patient identity is easy to search for."""
    for path in source.rglob("*.dcm"):
        dataset = dcmread(path)
        for keyword, value in CANARY.items():
            setattr(dataset, keyword, value)
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(out)
    return target


def test_metrics_health_json_logs_and_audit_of_a_round_trip(
    tmp_path: Path, pacs: Pacs, synthetic_study, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, http = free_port(), free_port()
    database = f"sqlite:///{tmp_path / 'lacuna.db'}"
    environment = node_environment(tmp_path, port, pacs, database, LACUNA_METRICS_PORT=str(http),
                                   LACUNA_METRICS_ENABLED="true", LACUNA_LOG_FORMAT="json")
    study = canary_study(synthetic_study.folder, tmp_path / "canary")
    instances = len(list(study.rglob("*.dcm")))
    node = spawn("serve", environment)
    try:
        # Probe the DICOM port once: every bare TCP connect holds an association slot until
        # pynetdicom's ARTIM timer drops it. Readiness is what HTTP is for.
        wait_for(lambda: listening(port), timeout_s=240)
        wait_for(lambda: get(http, "/ready")[0] == 200, timeout_s=240)
        assert get(http, "/health") == (200, '{"status": "alive"}\n')
        status, body = get(http, "/ready")
        checks = json.loads(body)["checks"]
        assert set(checks) == {"database", "storage", "disk", "model"}
        assert "loaded" in checks["model"]["detail"]
        # The bundled synthetic model sends to a PACS: ready, but never silently.
        assert "WARNING: the bundled synthetic-trained model" in checks["model"]["detail"]

        assert storescu(port, study).returncode == 0
        wait_for(lambda: {"SEG", "SR"} <= set(pacs.received()), timeout_s=240)
        text = wait_for(lambda: (t := get(http, "/metrics")[1])
                        and 'lacuna_jobs{state="done"} 1.0' in t and t, timeout_s=60)
        assert metric(text, 'lacuna_instances_received_total{duplicate="false"}') == instances
        assert metric(text, 'lacuna_associations_total{outcome="accepted"}') >= 1
        assert metric(text, 'lacuna_jobs_queued_total{shadow="false"}') == 1
        assert metric(text, "lacuna_queue_depth") == 0
        assert metric(text, "lacuna_inference_seconds_count") == 1
        assert metric(text, "lacuna_end_to_end_seconds_count") == 1
        assert metric(text, 'lacuna_deliveries_total{destination="pacs"}') == 2
        assert metric(text, 'lacuna_deliveries{destination="pacs",state="delivered"}') == 2
        assert metric(text, "lacuna_database_up") == 1
        assert 'lacuna_model_version{name="lacuna-synthetic"' in text
        assert get(http, "/nothing")[0] == 404
    finally:
        terminate(node)

    log_text = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
    lines = [line for line in log_text.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("job" in r["message"] and "done" in r["message"] for r in records)
    assert any("bundled synthetic-trained model" in r["message"] and "pacs" in r["message"]
               for r in records)
    for value in (*CANARY.values(), "CANARYSURNAME", "CANARYGIVEN", "1923-04-17"):
        assert value not in log_text, f"patient identity {value!r} in the logs"

    monkeypatch.setenv("LACUNA_DATABASE_URL", database)
    assert main(["audit", "verify"]) == EXIT_OK
    assert "chain intact" in capsys.readouterr().out


def test_low_disk_answers_out_of_resources_and_is_not_ready(
    tmp_path: Path, pacs: Pacs, synthetic_study,  # type: ignore[no-untyped-def]
) -> None:
    port, http = free_port(), free_port()
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    environment = node_environment(
        tmp_path, port, pacs, f"sqlite:///{tmp_path / 'lacuna.db'}",
        LACUNA_METRICS_PORT=str(http), LACUNA_METRICS_ENABLED="true",
        LACUNA_STORAGE_MIN_FREE_MB=str(free_mb + 10_000))
    scp = spawn("scp", environment)
    try:
        wait_for(lambda: listening(port), timeout_s=120)
        wait_for(lambda: get(http, "/health")[0] == 200, timeout_s=120)
        status, body = get(http, "/ready")
        assert status == 503
        report = json.loads(body)
        assert report["checks"]["disk"]["ok"] is False and report["checks"]["database"]["ok"]
        assert "model" not in report["checks"]  # the scp role loads no model
        one = next(synthetic_study.folder.rglob("*.dcm"))
        sent = storescu(port, one, "-v")
        assert "Refused: OutOfResources" in sent.stdout + sent.stderr, sent.stdout + sent.stderr
        assert not (tmp_path / "storage" / "instances").exists()  # nothing half-written
        metrics = get(http, "/metrics")[1]
        assert metric(metrics, 'lacuna_instance_rejections_total{reason="out_of_resources"}') == 1
    finally:
        terminate(scp)
