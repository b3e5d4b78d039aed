"""DICOM Segmentation of the lesions on the T2 FLAIR grid: one segment per lesion (the
default, so that each SR measurement group references exactly its lesion), or one per class."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.domain.lesions import LesionClass, LesionSegmentation
from node.results import codes
from node.results.identity import ModelIdentity, NodeIdentity, equipment, segmentation_algorithm
from node.results.patient import copy_patient_and_study


def tracking_id(lesion_number: int) -> str:
    """The Tracking ID a lesion carries in the SEG, the SR and the GSPS alike."""
    return f"Lesion {lesion_number}"


def new_tracking_uids(result: LesionSegmentation) -> dict[int, str]:
    """A new Tracking UID for each lesion (lesion number -> UID)."""
    return {lesion.number: str(generate_uid()) for lesion in result.lesions}


def segment_numbers(result: LesionSegmentation, per_lesion: bool = True) -> dict[int, int]:
    """Each lesion's segment number (lesion number -> segment number). By default one segment
    per lesion, numbered in lesion order; with ``per_lesion`` False one segment per class
    present, numbered 1.. in FCI, LACI, unclassified order."""
    if per_lesion:
        return {lesion.number: n for n, lesion in enumerate(result.lesions, start=1)}
    present = {lesion.lesion_class for lesion in result.lesions}
    ordered = [c for c in (LesionClass.FCI, LesionClass.LACI, LesionClass.UNCLASSIFIED)
               if c in present]
    by_class = {lesion_class: number for number, lesion_class in enumerate(ordered, start=1)}
    return {lesion.number: by_class[lesion.lesion_class] for lesion in result.lesions}


def build_segmentation(
    source_images: list[Dataset],
    result: LesionSegmentation,
    model: ModelIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    source_frames: list[int | None] | None = None,
    per_lesion: bool = True,
    *,
    node: NodeIdentity,
    tracking_uids: dict[int, str] | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG over ``source_images`` (the T2 FLAIR instance of each slice of
    ``result.labels``, in its order; ``source_frames`` gives each slice's frame number when the
    source is one multi-frame instance), with segments as :func:`segment_numbers` numbers them.
    A per-lesion segment is labelled by class and number, coloured by class, and carries the
    lesion's Tracking ID and ``tracking_uids[lesion number]`` (pass the SR's; new ones if
    None). Frames without lesions are omitted; each remaining frame references the source
    image (and frame) it was computed from. Raises ``ValueError`` when there is no lesion."""
    numbers = segment_numbers(result, per_lesion)
    tracking = tracking_uids or new_tracking_uids(result)
    if not numbers:
        raise ValueError("no lesions: a SEG needs at least one segment")
    if len(source_images) != result.labels.shape[0]:
        raise ValueError("one source image per slice of the label map is required")
    label_map: np.ndarray = np.zeros(result.labels.shape, dtype=np.uint8 if len(numbers) < 256
                                     else np.uint16)
    segments: dict[int, tuple[LesionClass, str, int | None]] = {}
    for lesion in result.lesions:
        number = numbers[lesion.number]
        label_map[result.lesion_numbers == lesion.number] = number
        label = codes.SEGMENT_LABEL[lesion.lesion_class]
        segments[number] = ((lesion.lesion_class, f"{tracking_id(lesion.number)}: {label}",
                             lesion.number) if per_lesion
                            else (lesion.lesion_class, label, None))
    if source_frames and any(frame is not None for frame in source_frames):
        # highdicom maps the SEG's frames onto a multi-frame source by frame index.
        instances = list({str(ds.SOPInstanceUID): ds for ds in source_images}.values())
        if len(instances) != 1 or any(frame is None for frame in source_frames):
            raise ValueError("frames must all come from one multi-frame instance")
        in_source_order = np.zeros((int(instances[0].NumberOfFrames), *label_map.shape[1:]),
                                   dtype=np.uint8)
        for k, frame in enumerate(source_frames):
            in_source_order[int(frame or 0) - 1] = label_map[k]
        source_images, label_map = instances, in_source_order

    algorithm = segmentation_algorithm(model)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=codes.within(label, "LO"),
            segmented_property_category=codes.CATEGORY,
            segmented_property_type=codes.LESION_TYPE[lesion_class],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.ANATOMIC_REGION],
            display_color=hd.color.CIELabColor(*codes.SEGMENT_LAB[lesion_class]),
            tracking_id=None if lesion_number is None else tracking_id(lesion_number),
            tracking_uid=None if lesion_number is None else tracking[lesion_number],
        )
        for number, (lesion_class, label, lesion_number) in sorted(segments.items())
    ]
    segmentation = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=codes.SEG_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        **equipment(model, node),
        content_description=codes.SEG_CONTENT_DESCRIPTION,
        content_label=codes.SEG_CONTENT_LABEL,
        series_description=codes.SEG_SERIES_DESCRIPTION,
        omit_empty_frames=True,
    )
    copy_patient_and_study(segmentation, source_images[0])
    return segmentation
