import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.health import CheckResult, HealthServer, disk_check, run_checks, storage_check
from node.metrics import NodeMetrics


def test_ready_reports_each_check_and_fails_on_any(tmp_path: Path) -> None:
    def broken() -> CheckResult:
        raise RuntimeError("boom")

    checks = {"storage": storage_check(tmp_path), "disk": disk_check(tmp_path, 0),
              "model": lambda: CheckResult(False, "loading"), "crashing": broken}
    ready, results = run_checks(checks)
    assert not ready
    assert results["storage"] == {"ok": True, "detail": "writable"}
    assert results["disk"]["ok"] and "MiB free" in results["disk"]["detail"]
    assert results["model"] == {"ok": False, "detail": "loading"}
    assert results["crashing"] == {"ok": False, "detail": "check failed: RuntimeError"}
    assert list(tmp_path.iterdir()) == []  # the write probe cleaned up
    assert not storage_check(tmp_path / "missing")().ok


def test_http_endpoint_and_a_taken_port(tmp_path: Path) -> None:
    metrics = NodeMetrics()
    metrics.rejections.labels(reason="cannot_understand").inc()
    server = HealthServer("127.0.0.1", 0, metrics, {"model": lambda: CheckResult(False, "loading")})
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics") as response:
            assert 'lacuna_instance_rejections_total{reason="cannot_understand"} 1.0' in (
                response.read().decode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/ready")
        assert refused.value.code == 503
        assert json.loads(refused.value.read())["checks"]["model"]["detail"] == "loading"
        with pytest.raises(ConfigError, match="metrics.port"):
            HealthServer("127.0.0.1", server.port, metrics, {})
    finally:
        server.stop()


def test_a_server_that_never_started_stops_at_once() -> None:
    server = HealthServer("127.0.0.1", 0, NodeMetrics(), {})
    server.stop()  # would wait forever for a serve loop that never ran
