"""Comprehensive SR with an Imaging Measurement Report (TID 1500): one volumetric measurement
group (TID 1411) per lesion, with its own segment, its Tracking ID and UID and the algorithm
(TID 4019), and document-level qualitative evaluations that say what was found, why lesions may
be unclassified, and that the model is not for clinical use. Comprehensive, not Comprehensive
3D: the lesions are referenced as SEG segments, no SCOORD3D is used, and Comprehensive SR is
what more archives and viewers accept."""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.domain.lesions import Lesion, LesionClass
from node.results import codes
from node.results.identity import (
    ModelIdentity,
    NodeIdentity,
    algorithm_identification,
    contributing_equipment,
)
from node.results.patient import copy_patient_and_study
from node.results.seg import tracking_id


def _source_images(lesion: Lesion,
                   slices: list[tuple[Dataset, int | None]]) -> list[hd.sr.SourceImageForSegmentation]:
    """The T2 FLAIR images (and frames) the lesion lies on, one item per instance."""
    frames: dict[str, tuple[Dataset, list[int]]] = {}
    for k in lesion.slices:
        dataset, frame = slices[k]
        entry = frames.setdefault(str(dataset.SOPInstanceUID), (dataset, []))
        if frame is not None:
            entry[1].append(frame)
    return [hd.sr.SourceImageForSegmentation(str(ds.SOPClassUID), uid, sorted(numbers) or None)
            for uid, (ds, numbers) in frames.items()]


def _lesion_group(
    lesion: Lesion,
    segmentation: hd.seg.Segmentation,
    segment_number: int,
    source_series_uid: str,
    tracking_uid: str,
    source_slices: list[tuple[Dataset, int | None]] | None,
    model: ModelIdentity,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    evaluations = [hd.sr.QualitativeEvaluation(codes.T2_HYPERINTENSITY, codes.PRESENT)]
    # A classified lesion was seen on T1 FLAIR: LACI is T1-dark, FCI is not.
    if lesion.lesion_class is not LesionClass.UNCLASSIFIED:
        t1_dark = lesion.lesion_class is LesionClass.LACI
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                codes.T1_HYPOINTENSITY, codes.PRESENT if t1_dark else codes.ABSENT
            )
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=tracking_id(lesion.number)
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=segment_number,
            # The source images the lesion lies on when known, else the source series.
            source_images=_source_images(lesion, source_slices) if source_slices else None,
            source_series=(None if source_slices
                           else hd.sr.SourceSeriesForSegmentation(source_series_uid)),
        ),
        finding_type=codes.LESION_TYPE[lesion.lesion_class],
        algorithm_id=algorithm_identification(model),
        finding_sites=[hd.sr.FindingSite(codes.ANATOMIC_REGION)],
        measurements=[
            hd.sr.Measurement(
                name=codes.VOLUME, value=round(lesion.volume_mm3, 2), unit=codes.CUBIC_MILLIMETER
            ),
            hd.sr.Measurement(
                name=codes.AREA, value=round(lesion.largest_area_mm2, 2),
                unit=codes.SQUARE_MILLIMETER, derivation=codes.MAXIMUM,
            ),
            hd.sr.Measurement(
                name=codes.DIAMETER, value=round(lesion.largest_diameter_mm, 2),
                unit=codes.MILLIMETER, derivation=codes.MAXIMUM,
            ),
            *([] if (probability := lesion.class_probability) is None else [
                hd.sr.Measurement(name=codes.CERTAINTY_OF_FINDING,
                                  value=round(100.0 * probability, 1), unit=codes.PERCENT)]),
        ],
        qualitative_evaluations=evaluations,
    )


def summary_statements(
    lesions: tuple[Lesion, ...],
    model: ModelIdentity,
    t1_missing_reason: str | None,
    supersedes: str | None = None,
) -> list[str]:
    """The document-level statements, in reading order. ``supersedes`` says which earlier
    report this one replaces, and why."""
    counts = {c: sum(1 for lesion in lesions if lesion.lesion_class is c) for c in LesionClass}
    statements = []
    if not lesions:
        statements.append("No FCI or LACI lesion found on T2 FLAIR.")
    else:
        statements.append(
            f"{len(lesions)} lesion(s) found: {counts[LesionClass.FCI]} FCI, "
            f"{counts[LesionClass.LACI]} LACI, {counts[LesionClass.UNCLASSIFIED]} unclassified; "
            f"total volume {sum(lesion.volume_mm3 for lesion in lesions):.1f} mm3."
        )
    if t1_missing_reason:
        statements.append(f"Lesions are unclassified where no T1 FLAIR exists: {t1_missing_reason}")
    if supersedes:
        statements.append(f"Supersedes an earlier report: {supersedes}")
    statements.append(
        f"Produced by {model.label}. {model.trained_on}. Not for clinical use."
    )
    return statements


def build_report(
    evidence: list[Dataset],
    lesions: tuple[Lesion, ...],
    segmentation: hd.seg.Segmentation | None,
    segment_numbers: dict[int, int],
    source_series_uid: str,
    model: ModelIdentity,
    t1_missing_reason: str | None,
    series_instance_uid: str,
    sop_instance_uid: str,
    supersedes: str | None = None,
    tracking_uids: dict[int, str] | None = None,
    source_slices: list[tuple[Dataset, int | None]] | None = None,
    *,
    node: NodeIdentity,
    previous_versions: list[Dataset] | None = None,
) -> hd.sr.ComprehensiveSR:
    """The SR for one run. ``evidence`` are the T2 (and T1) FLAIR images that were read;
    ``segmentation`` is None exactly when ``lesions`` is empty (a negative report);
    ``supersedes`` (text) names the earlier report a re-run replaces; ``tracking_uids`` (lesion
    number -> UID) are shared with the GSPS; ``source_slices`` (each T2 slice's instance and
    frame) let each lesion reference the images it lies on; ``node`` is the Device Observer;
    ``previous_versions`` are the earlier SRs this one replaces (Predecessor Documents).

    The image library (TID 1600) holds the single-frame images the lesions lie on (their
    descriptors are what a viewer needs to place them), or for a negative report the middle
    T2 FLAIR image; every image read stays in the evidence sequence."""
    if bool(lesions) != (segmentation is not None):
        raise ValueError("a SEG is required exactly when there are lesions")
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.OBSERVER_DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=node.device_uid,
            name=model.label[:64],
            manufacturer_name=codes.MANUFACTURER,
            model_name=model.name[:64],
            serial_number=node.serial_number,
        ),
    )
    groups = [] if segmentation is None else [
        _lesion_group(lesion, segmentation, segment_numbers[lesion.number], source_series_uid,
                      (tracking_uids or {}).get(lesion.number) or str(generate_uid()),
                      source_slices, model)
        for lesion in lesions
    ]
    # A study-level group comes first and is always there, so a negative report still states
    # its finding (white-matter T2 hyperintensity absent) in coded form.
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(generate_uid()), identifier="Study summary"
        ),
        finding_sites=[hd.sr.FindingSite(codes.ANATOMIC_REGION)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.T2_HYPERINTENSITY, codes.PRESENT if lesions else codes.ABSENT
            )
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=[summary, *groups],
        referenced_images=_library_images(evidence, lesions, source_slices) or None,
    )
    evaluations = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for text in summary_statements(lesions, model, t1_missing_reason, supersedes)
        ]
    )
    report[0].ContentSequence.append(evaluations)
    sr = hd.sr.ComprehensiveSR(
        # The SEG is referenced by the lesion groups, so it is evidence too.
        evidence=[*evidence, *([segmentation] if segmentation is not None else [])],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=codes.SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=codes.MANUFACTURER,
        is_complete=True,
        series_description=codes.SR_SERIES_DESCRIPTION,
        contributing_equipment=[contributing_equipment(model, node)],
        previous_versions=previous_versions or None,
    )
    copy_patient_and_study(sr, evidence[0])
    return sr


def _library_images(evidence: list[Dataset], lesions: tuple[Lesion, ...],
                    source_slices: list[tuple[Dataset, int | None]] | None) -> list[Dataset]:
    """The images of the image library: see :func:`build_report`. highdicom's library reads
    single-frame geometry, so multi-frame sources are referenced through the evidence only."""
    single_frame = [ds for ds in evidence if "PerFrameFunctionalGroupsSequence" not in ds]
    if not single_frame:
        return []
    if source_slices is None:
        return single_frame[:1]
    slices = sorted({k for lesion in lesions for k in lesion.slices}) or [len(source_slices) // 2]
    wanted = {str(source_slices[k][0].SOPInstanceUID) for k in slices}
    return [ds for ds in single_frame if str(ds.SOPInstanceUID) in wanted] or single_frame[:1]
