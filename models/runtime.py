"""Importing TensorFlow without letting its native libraries write to our stderr.

TensorFlow's C++ side (absl logging, oneDNN) prints to file descriptor 2 when it is imported,
whatever ``TF_CPP_MIN_LOG_LEVEL`` says, which breaks one-JSON-object-per-line logs. The import
runs with descriptor 2 pointed at a temporary file; each captured line is then logged through
:mod:`logging`, so it comes out in the node's log format.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading

logger = logging.getLogger("tensorflow.native")
_lock = threading.Lock()


def import_tensorflow() -> None:
    """Import TensorFlow and Keras once per process, re-logging what the import printed."""
    if "tensorflow" in sys.modules:
        return
    with _lock, tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines():
            if line.strip():
                logger.info("%s", line.strip())
