"""Intake alone, no network: CPU per instance of storing received files (parse, check, hash,
fsync, rename, index and audit rows, commit; SQLite, the embedded default) one at a time and
in batches of four, with the one-pass reader (node.dicom.part10) and with every file read by
pydicom (as all were before it; the reader made to decline). Runs are interleaved, so drift
on a shared machine hits both; prints medians and the ratio.

    .venv/bin/python bench/intake.py [--instances 240] [--matrix 256 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from ingest import make_files
from pydicom import dcmread

from harness.peers import free_port, local_settings
from node.app import open_database
from node.dicom.ports import ReceivedInstance
from node.services import intake as intake_module
from node.services.intake import Intake, StoredInstance

READERS = ("one-pass", "pydicom")


def cpu_ms_per_instance(folder: Path, files: list[Path], reader: str, batch: int) -> float:
    """Store ``files`` as a receiver hands them over (a file in the storage volume's incoming
    folder) into a fresh database and storage root, ``batch`` at a time; CPU ms per
    instance."""
    settings = local_settings(folder, free_port(), stable_seconds=3600)
    database = open_database(settings)
    intake = Intake(settings.storage.root, database.sessions)
    incoming = folder / "incoming"
    incoming.mkdir()
    received = []
    for number, path in enumerate(files):
        header = dcmread(path, stop_before_pixels=True)
        copy = incoming / f"{number}.dcm"
        shutil.copyfile(path, copy)
        received.append(ReceivedInstance(copy, "BENCH", "127.0.0.1", str(header.SOPClassUID),
                                         str(header.SOPInstanceUID)))
    # "pydicom": the one-pass reader declines every file, so each is read as all were before.
    declined = (mock.patch.object(intake_module, "read_part10", lambda data: None)
                if reader == "pydicom" else nullcontext())
    with declined:
        started = time.process_time()
        for first in range(0, len(received), batch):
            outcomes = intake.store_many(received[first:first + batch])
            if not all(isinstance(o, StoredInstance) for o in outcomes):
                raise RuntimeError(f"intake refused an instance: {outcomes}")
        elapsed = time.process_time() - started
    database.engine.dispose()
    return 1000 * elapsed / len(received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=240)
    parser.add_argument("--matrix", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'matrix':>6} {'batch':>5} " + " ".join(f"{r + ' ms/inst':>16}" for r in READERS)
              + "  one-pass/pydicom")
        for matrix in args.matrix:
            files = make_files(root / f"files-{matrix}", args.instances, matrix)
            for batch in (1, 4):
                runs: dict[str, list[float]] = {reader: [] for reader in READERS}
                for repeat in range(args.repeats):
                    for reader in READERS:
                        folder = root / f"{matrix}-{batch}-{reader}-{repeat}"
                        runs[reader].append(cpu_ms_per_instance(folder, files, reader, batch))
                medians = {reader: statistics.median(runs[reader]) for reader in READERS}
                print(f"{matrix:>6} {batch:>5} "
                      + " ".join(f"{medians[r]:>16.3f}" for r in READERS)
                      + f"  {medians['one-pass'] / medians['pydicom']:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
