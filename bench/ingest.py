"""Ingest over loopback: the same files, the same sender (dcmtk storescu with TCP_NODELAY),
into Lacuna's SCP (full indexing and audit, SQLite: the embedded default) in one process with
pynetdicom's receiver ("lacuna") and with the asyncio one ("lacuna-aio"), as `lacuna scp` with
two receiving processes on the port ("lacuna-2p"), dcmtk storescp and Orthanc (Debian
package, TCP_NODELAY), all measured in this one run; first the C-ECHO round trip of each.

Prints, per matrix and number of parallel associations, instances/s, MB/s, the receiver's
CPU time per instance (user + system of its process) and Lacuna's ratio to each peer. Runs are
interleaved (lacuna, storescp, orthanc, lacuna, ...) so drift on a shared machine hits all.
Each receiver is started afresh for every run, after ``os.sync()``, and first gets
``--warm-up`` instances of another study on one association, untimed. The sync matters most:
the run before has just deleted its folder (hundreds of MB) and storescp never fsyncs, and on
ext4 a receiver's fsyncs wait for that journal and write-back work; without the sync the same
code measured 0.73-0.91x Orthanc's rate over 960 instances, with it 1.00-1.14x (2026-12-07).

    .venv/bin/python bench/ingest.py [--instances 240] [--matrix 256 512] [--repeats 5]
        [--warm-up 24]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.peers import free_port, local_settings, running_orthanc, start_storescp
from node.app import EmbeddedNode
from training.phantom import axial_geometry
from training.synth import write_study

ENV = {**os.environ, "TCP_NODELAY": "1"}
TICKS = os.sysconf("SC_CLK_TCK")


def make_files(folder: Path, instances: int, matrix: int, first_seed: int = 0) -> list[Path]:
    """``instances`` MR files at ``matrix``, from whole synthetic studies (seeds
    ``first_seed``..: their UIDs differ from those of other seeds)."""
    files: list[Path] = []
    seed = first_seed
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


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextmanager
def lacuna(workdir: Path, engine: str = "pynetdicom") -> Iterator[
        tuple[int, str, Callable[[], float]]]:
    settings = local_settings(workdir, free_port(), stable_seconds=3600)
    settings = replace(settings, scp=replace(settings.scp, engine=engine))
    node = EmbeddedNode(settings, process=False)
    node.start()
    try:  # the node runs in this process; nothing else here works while storescu sends
        yield node.port, "LACUNA", time.process_time
    finally:
        node.stop()


@contextmanager
def lacuna_processes(workdir: Path, processes: int = 2, engine: str = "pynetdicom") -> Iterator[
        tuple[int, str, Callable[[], float]]]:
    """`lacuna scp` with ``[scp] processes``: receivers sharing the port (SO_REUSEPORT)."""
    import sys

    port = free_port()
    workdir.mkdir(parents=True)
    environment = {**os.environ, "LACUNA_SCP_PORT": str(port), "LACUNA_SCP_HOST": "127.0.0.1",
                   "LACUNA_SCP_PROCESSES": str(processes), "LACUNA_METRICS_ENABLED": "false",
                   "LACUNA_SCP_ENGINE": engine,
                   "LACUNA_DATABASE_URL": f"sqlite:///{workdir / 'lacuna.db'}",
                   "LACUNA_STORAGE_ROOT": str(workdir / "storage"), "LACUNA_LOG_LEVEL": "WARNING"}
    log = (workdir / "scp.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "node.cli", "scp"], env=environment,
                               stdout=log, stderr=subprocess.STDOUT)

    def tree() -> list[int]:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        return [process.pid, *map(int, children)]

    deadline = time.monotonic() + 60
    while len(tree()) < processes or not _listening(port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"lacuna scp did not start; see {workdir / 'scp.log'}")
        time.sleep(0.2)
    try:
        yield port, "LACUNA", lambda: sum(process_cpu(pid) for pid in tree())
    finally:
        process.terminate()
        process.wait()
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def storescp(workdir: Path) -> Iterator[tuple[int, str, Callable[[], float]]]:
    port = free_port()
    process = start_storescp(workdir, port)
    try:
        yield port, "DEMOPACS", lambda: process_cpu(process.pid)
    finally:
        process.terminate()
        process.wait()


@contextmanager
def orthanc(workdir: Path) -> Iterator[tuple[int, str, Callable[[], float]]]:
    with running_orthanc(workdir, dicomweb=False) as peer:
        yield peer.dicom_port, peer.ae_title, lambda: process_cpu(peer.pid)


def lacuna_asyncio(workdir: Path) -> Any:
    return lacuna(workdir, engine="asyncio")


def lacuna_asyncio_processes(workdir: Path) -> Any:
    return lacuna_processes(workdir, engine="asyncio")


# Each receiver starts in a folder and yields (port, AE title, a reader of its CPU seconds).
RECEIVERS = {"lacuna": lacuna, "lacuna-aio": lacuna_asyncio, "lacuna-2p": lacuna_processes,
             "lacuna-aio-2p": lacuna_asyncio_processes,
             "storescp": storescp, "orthanc": orthanc}


def echo_round_trip_ms(port: int, ae_title: str, echoes: int = 300) -> float:
    """Median C-ECHO round trip on one association, from a raw socket client (pynetdicom's
    encoders, no reactor of its own in the way): send the request, read the response."""
    import socket

    from harness import wire

    echo = b"".join(wire.p_data_pdus(wire.echo_message(), 1, 16384))

    with socket.create_connection(("127.0.0.1", port)) as stream:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream.sendall(wire.associate_rq(ae_title, calling="BENCH"))
        answer = wire.read_pdu(stream)
        if answer is None or answer[0] != 0x02:
            raise RuntimeError("C-ECHO association not accepted")
        times = []
        for _ in range(echoes):
            started = time.perf_counter()
            stream.sendall(echo)
            wire.read_pdu(stream)
            times.append(time.perf_counter() - started)
        stream.sendall(wire.RELEASE_RQ)
        wire.read_pdu(stream)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=240)
    parser.add_argument("--matrix", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warm-up", type=int, default=24,
                        help="instances of another study sent, untimed, to each receiver just "
                             "started (0: none): the figures are then its steady state, not its "
                             "first-instance costs")
    parser.add_argument("--receivers", nargs="+", choices=sorted(RECEIVERS),
                        default=list(RECEIVERS), help="a subset to measure (default: all)")
    args = parser.parse_args()
    receivers = {name: RECEIVERS[name] for name in RECEIVERS if name in args.receivers}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("C-ECHO round trip on loopback, median of 300 on one association:")
        for name, receiver in receivers.items():
            with receiver(folder / f"echo-{name}") as (port, ae_title, _cpu):
                print(f"  {name:<13} {echo_round_trip_ms(port, ae_title):.3f} ms", flush=True)
        for matrix in args.matrix:
            files = make_files(folder / f"files-{matrix}", args.instances, matrix)
            warm_up = make_files(folder / f"warm-up-{matrix}", args.warm_up, matrix,
                                 first_seed=500) if args.warm_up else []
            megabytes = sum(p.stat().st_size for p in files) / 1e6
            print(f"\n{len(files)} MR instances, {matrix}x{matrix}, {megabytes:.1f} MB; "
                  f"medians of {args.repeats} interleaved runs, each receiver sent "
                  f"{len(warm_up)} other instances untimed first")
            print(f"{'receiver':<13} {'assocs':>6} {'inst/s':>8} {'MB/s':>7} {'CPU ms/inst':>12} "
                  f"{'aio/peer':>9} {'aio-2p/peer':>12}")
            # aio/peer: Lacuna's asyncio receiver (one process) against the peer; aio-2p/peer:
            # the asyncio receiver in two processes on the port (`[scp] processes = 2`).
            for associations in args.associations:
                seconds: dict[str, list[float]] = {name: [] for name in receivers}
                cpu: dict[str, list[float]] = {name: [] for name in receivers}
                for repeat in range(args.repeats):
                    for name, receiver in receivers.items():
                        workdir = folder / f"{name}-{matrix}-{associations}-{repeat}"
                        # No receiver pays for the run before it: the deletion of its folder
                        # and (storescp never fsyncs) its unwritten files would otherwise be
                        # flushed by this receiver's fsyncs (one ext4 journal for all).
                        os.sync()
                        with receiver(workdir) as (port, ae_title, cpu_seconds):
                            if warm_up:
                                send(port, ae_title, warm_up, 1)
                            cpu_before = cpu_seconds()
                            seconds[name].append(send(port, ae_title, files, associations))
                            cpu[name].append(cpu_seconds() - cpu_before)
                        shutil.rmtree(workdir, ignore_errors=True)
                rates = {name: len(files) / statistics.median(times)
                         for name, times in seconds.items()}
                for name in receivers:
                    ratios = ["" if name.startswith("lacuna") or ours not in rates
                              else f"{rates[ours] / rates[name]:.2f}"
                              for ours in ("lacuna-aio", "lacuna-aio-2p")]
                    cpu_ms = 1000 * statistics.median(cpu[name]) / len(files)
                    print(f"{name:<13} {associations:>6} {rates[name]:>8.0f} "
                          f"{rates[name] * megabytes / len(files):>7.1f} {cpu_ms:>12.2f} "
                          f"{ratios[0]:>9} {ratios[1]:>12}", flush=True)


if __name__ == "__main__":
    main()
