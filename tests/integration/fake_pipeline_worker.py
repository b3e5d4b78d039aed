"""A worker process with the real claim, lease and audit code and a fast fake pipeline.

    python -m tests.integration.fake_pipeline_worker DATABASE_URL OWNER GO_FILE

Waits for GO_FILE (so all workers start together), drains the queue, prints how many jobs it
finished as JSON and exits. Who claimed what is in the audit trail.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from node.config import WorkerSettings
from node.db.engine import build_engine, session_factory
from node.services.processing import RunReport
from node.services.worker import Worker


class FakeProcessor:
    """Stands in for reading, inference and encoding: a few milliseconds of 'work'."""

    def inputs(self, job_id: int) -> SimpleNamespace:
        return SimpleNamespace(study_instance_uid=f"1.2.826.0.1.{job_id}")

    def stored_results(self, job_id: int) -> None:
        return None

    def run(self, job_id: int, inputs: SimpleNamespace, owner: str) -> RunReport:
        time.sleep(0.01)
        return RunReport(timings={"inference": 0.01})


class NoExport:
    def enqueue(self, job_id: int) -> int:
        return 0

    def deliver_due(self, job_id: int | None = None) -> int:
        return 0


def main(url: str, owner: str, go_file: str) -> None:
    engine = build_engine(url)
    worker = Worker(session_factory(engine), FakeProcessor(), NoExport(),  # type: ignore[arg-type]
                    WorkerSettings(lease_seconds=60), owner=owner)
    while not Path(go_file).exists():
        time.sleep(0.01)
    done = idle = 0
    while idle < 3:  # three empty claims in a row: the queue is drained
        if worker.run_once() is None:
            idle += 1
            time.sleep(0.05)
        else:
            done, idle = done + 1, 0
    engine.dispose()
    print(json.dumps({"owner": owner, "done": done}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
