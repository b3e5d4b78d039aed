"""DICOMweb: STOW-RS delivery and a QIDO-RS probe, with dicomweb-client."""

from __future__ import annotations

import time
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from node.config import Destination
from node.dicom.outcome import SendOutcome
from node.errors import DeliveryError

TIMEOUT_SECONDS = 60.0
_SUCCESS, _WARNING, _PROCESSING_FAILURE = 0x0000, 0xB000, 0x0110


def _client(destination: Destination) -> DICOMwebClient:
    if not destination.url:
        raise ValueError(f"destination {destination.name} has no DICOMweb URL")
    return DICOMwebClient(url=destination.url, timeout=TIMEOUT_SECONDS)


def statuses_of(response: Dataset) -> dict[str, int]:
    """Per-instance statuses from a STOW-RS response (PS3.18 10.5.3): referenced instances
    succeeded (with a warning when they carry a Warning Reason), failed ones carry a Failure
    Reason."""
    statuses: dict[str, int] = {}
    for item in response.get("ReferencedSOPSequence", []):
        warning = item.get("WarningReason")
        statuses[str(item.ReferencedSOPInstanceUID)] = _WARNING if warning else _SUCCESS
    for item in response.get("FailedSOPSequence", []):
        statuses[str(item.ReferencedSOPInstanceUID)] = int(item.get("FailureReason",
                                                                   _PROCESSING_FAILURE))
    return statuses


def store_files(destination: Destination, paths: list[Path]) -> list[SendOutcome]:
    """STOW-RS every file in one request to ``{url}/studies``. An HTTP error answers every
    instance with no status; an unreachable server raises :class:`DeliveryError`."""
    datasets = [dcmread(path) for path in paths]
    try:
        response = _client(destination).store_instances(datasets)
        statuses = statuses_of(response) if response is not None else {}
    except requests.HTTPError as error:
        code = error.response.status_code if error.response is not None else "?"
        raise DeliveryError(f"destination {destination.name} ({destination.url}) answered "
                            f"HTTP {code} to STOW-RS") from None
    except requests.RequestException as error:
        raise DeliveryError(f"destination {destination.name} ({destination.url}) unreachable: "
                            f"{type(error).__name__}") from None
    return [SendOutcome(path, str(ds.SOPInstanceUID), statuses.get(str(ds.SOPInstanceUID)))
            for path, ds in zip(paths, datasets, strict=True)]


def probe(destination: Destination) -> tuple[bool, str, float]:
    """QIDO-RS one study from ``destination``: (answered, what happened, seconds taken)."""
    started = time.perf_counter()
    try:
        _client(destination).search_for_studies(limit=1)
    except requests.HTTPError as error:
        code = error.response.status_code if error.response is not None else "?"
        return False, f"QIDO-RS answered HTTP {code} ({destination.url})", time.perf_counter() - started
    except requests.RequestException as error:
        return False, f"no answer ({destination.url}): {type(error).__name__}", (
            time.perf_counter() - started)
    return True, "QIDO-RS success", time.perf_counter() - started
