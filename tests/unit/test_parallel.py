"""Rendering workers do not outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def record_pid_and_wait(folder: str) -> None:
    """A worker's task: leave its pid in ``folder``, then wait far longer than any test."""
    Path(folder, str(os.getpid())).touch()
    time.sleep(600)


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting for a reaper, has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_workers_end_when_the_process_that_spawned_them_is_killed(tmp_path: Path) -> None:
    assert (os.cpu_count() or 1) >= 2, "map_on_cores runs in-process on one core"
    driver = subprocess.Popen(
        [sys.executable, "-c",
         "from tests.unit.test_parallel import record_pid_and_wait\n"
         "from training.parallel import map_on_cores\n"
         f"list(map_on_cores(record_pid_and_wait, [{str(tmp_path)!r}] * 3))\n"],
        cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before its workers started"
            time.sleep(0.1)
        workers = [int(path.name) for path in tmp_path.iterdir()]
        assert len(workers) >= 2 and all(_running(pid) for pid in workers)

        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 15
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in workers), "orphaned workers are still running"
    finally:
        driver.kill()
        for path in tmp_path.iterdir():
            try:
                os.kill(int(path.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
