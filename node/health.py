"""The node's small HTTP endpoint: ``/metrics`` (Prometheus), ``/health`` (liveness: the
process answers) and ``/ready`` (every readiness check passes; 503 and the failing checks
otherwise)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from node.db.engine import SessionFactory
from node.errors import ConfigError
from node.metrics import NodeMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


Check = Callable[[], CheckResult]


def database_check(sessions: SessionFactory) -> Check:
    def check() -> CheckResult:
        try:
            with sessions.begin() as session:
                session.execute(text("SELECT 1"))
        except Exception as error:
            return CheckResult(False, f"unreachable: {type(error).__name__}")
        return CheckResult(True, "reachable")
    return check


def storage_check(root: Path) -> Check:
    """The storage root accepts a synced write (and the delete of it)."""
    def check() -> CheckResult:
        probe = root / f".ready-{uuid.uuid4().hex}"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ok")
                handle.flush()
                os.fsync(handle.fileno())
            probe.unlink()
        except OSError as error:
            return CheckResult(False, f"not writable: {error.strerror}")
        return CheckResult(True, "writable")
    return check


def disk_check(root: Path, min_free_bytes: int) -> Check:
    def check() -> CheckResult:
        try:
            free = shutil.disk_usage(root).free
        except OSError as error:
            return CheckResult(False, f"cannot stat: {error.strerror}")
        detail = f"{free // 2**20} MiB free, threshold {min_free_bytes // 2**20} MiB"
        return CheckResult(free >= min_free_bytes, detail)
    return check


def run_checks(checks: dict[str, Check]) -> tuple[bool, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, Any]] = {}
    for name, check in checks.items():
        try:
            result = check()
        except Exception as error:  # a crashing check is a failing check
            result = CheckResult(False, f"check failed: {type(error).__name__}")
        results[name] = {"ok": result.ok, "detail": result.detail}
    return all(r["ok"] for r in results.values()), results


class HealthServer:
    """Serves the three paths from a daemon thread; ``port`` 0 picks a free port."""

    def __init__(self, host: str, port: int, metrics: NodeMetrics, checks: dict[str, Check]):
        registry, all_checks = metrics.registry, checks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/health":
                    self._send(200, "application/json", b'{"status": "alive"}\n')
                elif path == "/ready":
                    ready, results = run_checks(all_checks)
                    body = json.dumps({"ready": ready, "checks": results}, indent=2) + "\n"
                    self._send(200 if ready else 503, "application/json", body.encode())
                else:
                    self._send(404, "text/plain", b"not found: try /metrics, /health, /ready\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not events
                return

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise ConfigError("metrics.port", f"cannot listen on {host}:{port}: {error.strerror}; "
                              "give each process on a host its own port "
                              "(LACUNA_METRICS_PORT, 0 for any free one)") from error
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="lacuna-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics and health on http://%s:%d (/metrics, /health, /ready)",
                    self._server.server_address[0], self.port)

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which must be running
            self._server.shutdown()
        self._server.server_close()
