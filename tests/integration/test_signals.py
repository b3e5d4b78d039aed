"""A node's main thread runs its SIGTERM handler even when the kernel hands the signal to
another of its threads (TensorFlow's, the lease renewer, the receiver's)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_waiting_node_stops_on_a_sigterm_another_thread_received(tmp_path: Path) -> None:
    # `lacuna serve|scp|worker` install this handler and wait; here a helper thread takes the
    # signal itself, which the kernel may do with a process-directed SIGTERM.
    script = textwrap.dedent(f"""
        import signal, threading, time
        from pathlib import Path
        from harness.peers import local_settings
        from node.app import EmbeddedNode

        node = EmbeddedNode(local_settings(Path({str(tmp_path)!r}), 11112), receive=True,
                            process=False)
        signal.signal(signal.SIGTERM, lambda _signum, _frame: node.request_stop())
        ready = threading.Event()

        def helper():
            ready.set()
            time.sleep(60)

        other = threading.Thread(target=helper, daemon=True)
        other.start()
        ready.wait()
        threading.Timer(0.5, signal.pthread_kill, (other.ident, signal.SIGTERM)).start()
        node.wait()
        print("stopped")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr
