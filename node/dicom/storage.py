"""Files under the storage root, written atomically under paths built from validated UIDs.

Layout: ``instances/<study>/<series>/<sop>.dcm`` for what we receive and
``results/<study>/<series>/<sop>.dcm`` for what we make. Bytes are stored as received.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


def fsync_directory(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def make_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents, fsyncing the parent of each one created, so
    a new study or series folder survives a crash along with the files in it."""
    if folder.is_dir():
        return
    make_folder(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:  # another association made it first
        return
    fsync_directory(folder.parent)


def move_atomically(
    root: Path, relative: Path, source: Path, sync_directory: bool = True
) -> Path:
    """Move the finished file ``source`` to ``root/relative`` with the guarantees of
    :func:`write_atomically`: a rename when both are on one file system (no copy), else a copy
    to a temporary file beside the target, fsync, rename. With ``sync_directory`` False the
    caller must :func:`fsync_directory` the target's folder before relying on the move."""
    target = root / relative
    make_folder(target.parent)
    descriptor = os.open(source, os.O_RDONLY)  # a bare descriptor: fsync needs no more
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        with source.open("rb") as stream:
            _replace_from(target, lambda out: shutil.copyfileobj(stream, out, 2**20))
        source.unlink(missing_ok=True)
    if sync_directory:
        fsync_directory(target.parent)
    return target


def remove_stale_files(folder: Path, older_than_seconds: float) -> int:
    """Delete files in ``folder`` (not below it) last modified more than ``older_than_seconds``
    ago: transfers a crashed process left behind. Returns how many were removed."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def write_atomically(root: Path, relative: Path, data: bytes) -> Path:
    """Write ``data`` to ``root/relative``: temporary file in the same folder, fsync, rename,
    fsync of the folder. Either the complete new file is there afterwards or the old one is."""
    target = root / relative
    make_folder(target.parent)
    _replace_from(target, lambda out: out.write(data))
    fsync_directory(target.parent)
    return target


def _replace_from(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file beside ``target`` with ``write``, fsync it, rename it over
    ``target``; on any failure the temporary file is removed and ``target`` is untouched."""
    descriptor, temporary = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
