"""Multi-frame (Enhanced and Legacy Converted Enhanced MR) instances: attributes from their
functional groups, and one slice per frame with its own geometry.

Where a single-frame MR image has ``RepetitionTime`` or ``ImagePositionPatient`` at the top
level, a multi-frame one has them in the Shared Functional Groups Sequence (the same for all
frames) or in each item of the Per-frame Functional Groups Sequence, nested one sequence deeper
(``PlanePositionSequence[0].ImagePositionPatient``). Legacy Converted objects keep attributes
without a functional group in the "Unassigned ... Converted Attributes" sequences.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom import Dataset


def is_multiframe(dataset: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in dataset


def _group_items(item: Dataset) -> Iterator[Dataset]:
    """The macro items of one functional groups item (each sequence's first item)."""
    for element in item:
        if element.VR == "SQ" and element.value:
            yield element.value[0]


def _find(items: list[Dataset], keyword: str) -> Any:
    for item in items:
        if keyword in item:
            return item[keyword].value
        for macro in _group_items(item):
            if keyword in macro:
                return macro[keyword].value
    return None


def attribute(dataset: Dataset, keyword: str, frame: int = 1) -> Any:
    """``keyword``'s value at the top level, else in frame ``frame``'s (1-based) functional
    groups, else in the shared ones; None when absent. For a single-frame image this is the
    top-level value."""
    if keyword in dataset:
        return dataset[keyword].value
    items: list[Dataset] = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if 0 < frame <= len(per_frame):
        items.append(per_frame[frame - 1])
    items.extend(dataset.get("SharedFunctionalGroupsSequence") or [])
    return _find(items, keyword)


def acquisition_attributes(dataset: Dataset) -> dict[str, Any]:
    """TR, TE, TI (ms), scanning sequence and scan options as a single-frame image states them:
    from its top level, or from a multi-frame image's functional groups (Enhanced MR: MR
    Timing, MR Echo, MR Modifier macros and Echo Pulse Sequence; Legacy Converted: the
    unassigned attributes)."""
    echo_time = attribute(dataset, "EffectiveEchoTime")
    if echo_time is None:
        echo_time = attribute(dataset, "EchoTime")
    inversion_time = attribute(dataset, "InversionTimes")
    if inversion_time is None:
        inversion_time = attribute(dataset, "InversionTime")
    if isinstance(inversion_time, list | tuple):
        inversion_time = inversion_time[0] if inversion_time else None
    scanning_sequence = attribute(dataset, "ScanningSequence")
    if scanning_sequence is None:
        pulse = str(attribute(dataset, "EchoPulseSequence") or "")
        scanning_sequence = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}.get(pulse, [])
        if str(attribute(dataset, "InversionRecovery") or "") == "YES":
            scanning_sequence = [*scanning_sequence, "IR"]
    return {
        "repetition_time": attribute(dataset, "RepetitionTime"),
        "echo_time": echo_time,
        "inversion_time": inversion_time,
        "scanning_sequence": scanning_sequence,
        "scan_options": attribute(dataset, "ScanOptions"),
    }
