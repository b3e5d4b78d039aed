"""What a re-run does with the results it replaces: keeps each lesion's Tracking UID when it is
the same lesion (the same place: overlapping voxels), and withdraws the earlier objects with an
IHE IOCM rejection note (Key Object Selection, "Rejected for Quality Reasons")."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.domain.lesions import LesionSegmentation
from node.results import codes
from node.results.identity import ModelIdentity, NodeIdentity, contributing_equipment
from node.results.patient import copy_patient_and_study
from node.results.readback import segmentation_pixels


def carried_tracking_uids(earlier_seg: Dataset, source_slices: list[tuple[str, int | None]],
                          result: LesionSegmentation) -> dict[int, str]:
    """Lesion number -> the Tracking UID of the earlier SEG's segment it overlaps most, for
    each lesion of ``result`` that overlaps one (each earlier UID goes to one lesion at most,
    largest overlap first). ``source_slices`` are the T2 FLAIR slices of ``result`` as (SOP
    Instance UID, frame). Segments without a Tracking UID (a per-class SEG) carry none."""
    seg = hd.seg.Segmentation.from_dataset(earlier_seg, copy=False)
    tracked = {int(item.SegmentNumber): str(item.TrackingUID) for item in seg.SegmentSequence
               if "TrackingUID" in item}
    if not tracked:
        return {}
    pixels = segmentation_pixels(seg, source_slices)  # (slices, rows, cols, segments)
    if pixels.shape[:3] != result.lesion_numbers.shape:
        return {}
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    overlaps: list[tuple[int, int, str]] = []
    for lesion in result.lesions:
        mask = result.lesion_numbers == lesion.number
        for index, number in enumerate(numbers):
            if number not in tracked:
                continue
            common = int(np.count_nonzero(pixels[..., index][mask]))
            if common:
                overlaps.append((common, lesion.number, tracked[number]))
    carried: dict[int, str] = {}
    for _, lesion_number, uid in sorted(overlaps, reverse=True):
        if lesion_number not in carried and uid not in carried.values():
            carried[lesion_number] = uid
    return carried


def build_rejection_note(rejected: list[Dataset], model: ModelIdentity, node: NodeIdentity,
                         series_instance_uid: str, sop_instance_uid: str,
                         reason: str) -> hd.ko.KeyObjectSelectionDocument:
    """An IOCM rejection note for ``rejected`` (the objects a re-run replaces, all of one
    study): a Key Object Selection titled "Rejected for Quality Reasons" that lists each one,
    with ``reason`` as its description, in the study, filed under its patient and study."""
    if not rejected:
        raise ValueError("a rejection note lists at least one object")
    content = hd.ko.KeyObjectSelection(
        document_title=codes.REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=rejected,
        description=f"{reason}; {codes.NOT_FOR_CLINICAL_USE}",  # a TEXT item: no length limit
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=rejected,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=codes.KOS_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=codes.MANUFACTURER,
        contributing_equipment=[contributing_equipment(model, node)],
    )
    note.SeriesDescription = codes.KOS_SERIES_DESCRIPTION
    copy_patient_and_study(note, rejected[0])
    return note
