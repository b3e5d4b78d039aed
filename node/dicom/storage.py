"""Files under the storage root, written atomically under paths built from validated UIDs.

Layout: ``instances/<study>/<series>/<sop>.dcm`` for what we receive and
``results/<study>/<series>/<sop>.dcm`` for what we make. Bytes are stored as received.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUid(ValueError):
    pass


def checked_uid(value: object, keyword: str) -> str:
    """``value`` as a UID usable in a path; :class:`InvalidUid` otherwise (this also refuses
    path traversal such as ``../``)."""
    text = str(value or "").strip().rstrip("\x00")
    if not text or len(text) > 64 or not _UID.match(text):
        raise InvalidUid(f"{keyword} is not a valid UID: {text[:80]!r}")
    return text


def relative_path(kind: str, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    return Path(kind) / study_uid / series_uid / f"{sop_uid}.dcm"


def write_atomically(root: Path, relative: Path, data: bytes) -> Path:
    """Write ``data`` to ``root/relative``: temporary file in the same folder, fsync, rename,
    fsync of the folder. Either the complete new file is there afterwards or the old one is."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target
