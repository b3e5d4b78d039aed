"""C-STORE SCU: send result files to a destination and report each status."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import Destination
from node.dicom.outcome import SendOutcome
from node.errors import DeliveryError


def echo(destination: Destination, calling_ae: str) -> tuple[bool, str, float]:
    """C-ECHO ``destination``: (answered with success, what happened, seconds taken)."""
    started = time.perf_counter()
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no answer"
        return False, f"{reason} ({destination.ae_title}@{destination.host}:{destination.port})", (
            time.perf_counter() - started)
    try:
        response = assoc.send_c_echo()
        status = int(response.Status) if "Status" in response else None
    finally:
        assoc.release()
    ok = status == 0
    return ok, "C-ECHO success" if ok else f"C-ECHO status {status}", time.perf_counter() - started


def send_files(destination: Destination, paths: list[Path], calling_ae: str) -> list[SendOutcome]:
    """C-STORE every file over one association, proposing the destination's transfer syntaxes
    (pynetdicom re-encodes an uncompressed dataset to the one accepted). Raises
    :class:`DeliveryError` when the association cannot be established."""
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, list(destination.transfer_syntaxes))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise DeliveryError(
            f"destination {destination.name} ({destination.ae_title}@{destination.host}:"
            f"{destination.port}) refused or did not answer the association"
        )
    outcomes: list[SendOutcome] = []
    try:
        for path, dataset in zip(paths, datasets, strict=True):
            response = assoc.send_c_store(dataset)
            status = int(response.Status) if "Status" in response else None
            outcomes.append(SendOutcome(path, str(dataset.SOPInstanceUID), status))
    finally:
        assoc.release()
    return outcomes
