"""Ingest over loopback: the same files, the same sender (dcmtk storescu with TCP_NODELAY),
into Lacuna's SCP (``lacuna scp`` role: full indexing and audit) and dcmtk storescp.

Prints instances/s and MB/s per receiver and the ratio of Lacuna to each peer, for one
association and for four in parallel (the files split four ways).

    .venv/bin/python bench/ingest.py [--instances 240] [--matrix 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from node.app import EmbeddedNode
from node.demo import free_port, local_settings, start_storescp
from training.phantom import axial_geometry
from training.synth import write_study

ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_files(folder: Path, instances: int, matrix: int) -> list[Path]:
    files: list[Path] = []
    seed = 0
    while len(files) < instances:
        study = write_study(folder / f"s{seed}", 7000 + seed, include_t1=False, lesion_count=1,
                            t2_geometry=axial_geometry(matrix=matrix))
        files.extend(p for paths in study.series.values() for p in paths)
        seed += 1
    return files[:instances]


def send(port: int, ae_title: str, files: list[Path], associations: int) -> float:
    chunks = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(["storescu", "-aec", ae_title, "127.0.0.1", str(port),
                          *map(str, chunk)], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for chunk in chunks
    ]
    codes = [sender.wait() for sender in senders]
    elapsed = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"storescu failed: {codes}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=240)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = make_files(folder / "files", args.instances, args.matrix)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} MR instances, {args.matrix}x{args.matrix}, {megabytes:.1f} MB; "
              f"medians of {args.repeats} runs")
        print(f"{'receiver':<10} {'assocs':>6} {'inst/s':>9} {'MB/s':>8} {'Lacuna/peer':>12}")
        for associations in (1, 4):
            rates: dict[str, float] = {}
            for receiver in ("storescp", "lacuna"):
                times = []
                for repeat in range(args.repeats):
                    workdir = folder / f"{receiver}-{associations}-{repeat}"
                    port = free_port()
                    if receiver == "storescp":
                        process = start_storescp(workdir, port)
                        try:
                            times.append(send(port, "DEMOPACS", files, associations))
                        finally:
                            process.terminate()
                            process.wait()
                    else:
                        settings = local_settings(workdir, free_port(), stable_seconds=3600)
                        node = EmbeddedNode(settings, process=False)
                        node.start()
                        try:
                            times.append(send(node.port, "LACUNA", files, associations))
                        finally:
                            node.stop()
                seconds = statistics.median(times)
                rates[receiver] = len(files) / seconds
                ratio = "" if receiver == "storescp" else f"{rates['lacuna'] / rates['storescp']:.2f}"
                print(f"{receiver:<10} {associations:>6} {rates[receiver]:>9.0f} "
                      f"{megabytes / seconds:>8.1f} {ratio:>12}")


if __name__ == "__main__":
    main()
