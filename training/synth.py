"""``lacuna-train synth``: synthetic T2 FLAIR + T1 FLAIR studies written as DICOM, as a scanner
writes them, with a ground-truth file beside each study.

Layout of ``OUT``: ``subject-NNN/T2_FLAIR/*.dcm``, ``subject-NNN/T1_FLAIR/*.dcm``,
``subject-NNN/ground_truth.json`` and ``subject-NNN/labels.npy`` (uint8 on the T2 grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from skimage.measure import label, regionprops

from training.phantom import (
    Contrast,
    Phantom,
    SeriesImage,
    StackGeometry,
    axial_geometry,
    make_phantom,
    make_realistic_phantom,
    render_series,
)

# Acquisition parameters as a 3 T scanner would write them (ms).
PROTOCOLS: dict[Contrast, dict[str, object]] = {
    Contrast.T2_FLAIR: {
        "SeriesDescription": "AX T2 FLAIR", "RepetitionTime": 9000.0, "EchoTime": 120.0,
        "InversionTime": 2500.0, "EchoTrainLength": 16, "FlipAngle": 150.0, "SeriesNumber": 4,
    },
    Contrast.T1_FLAIR: {
        "SeriesDescription": "AX T1 FLAIR", "RepetitionTime": 2000.0, "EchoTime": 9.0,
        "InversionTime": 860.0, "EchoTrainLength": 6, "FlipAngle": 150.0, "SeriesNumber": 5,
    },
}


@dataclass(frozen=True)
class SyntheticStudy:
    folder: Path
    study_instance_uid: str
    series: dict[Contrast, list[Path]]
    ground_truth: list[dict[str, object]]


def _study_dataset(seed: int, study_uid: str, frame_uid: str, when: datetime) -> Dataset:
    ds = Dataset()
    ds.PatientName = f"SYNTHETIC^SUBJECT{seed:05d}"
    ds.PatientID = f"SYN{seed:07d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.StudyID = f"{seed % 100000}"
    ds.AccessionNumber = f"ACC{seed:07d}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI BRAIN (SYNTHETIC)"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "Lacuna Synthetic"
    ds.ManufacturerModelName = "MNI152 phantom"
    ds.InstitutionName = "Synthetic"
    ds.MagneticFieldStrength = 3.0
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    return ds


def series_datasets(
    image: SeriesImage,
    contrast: Contrast,
    seed: int,
    study_uid: str,
    frame_uid: str,
    when: datetime,
    instance_order: np.ndarray | None = None,
) -> list[Dataset]:
    """One MR Image Storage dataset per slice. ``instance_order`` permutes InstanceNumber
    (to test that nothing relies on it)."""
    geometry: StackGeometry = image.geometry
    series_uid = str(generate_uid())
    protocol = PROTOCOLS[contrast]
    order = instance_order if instance_order is not None else np.arange(geometry.slices)
    datasets = []
    for k in range(geometry.slices):
        ds = _study_dataset(seed, study_uid, frame_uid, when)
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "MR"
        ds.SeriesDate, ds.SeriesTime = ds.StudyDate, ds.StudyTime
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = ["SE", "IR"]
        ds.SequenceVariant = ["SK", "SP", "MP"]
        ds.ScanOptions = ["IR"]
        ds.MRAcquisitionType = "2D"
        for keyword, value in protocol.items():
            setattr(ds, keyword, value)
        ds.SliceThickness = geometry.slice_thickness
        ds.SpacingBetweenSlices = geometry.slice_spacing
        ds.InstanceNumber = int(order[k]) + 1
        ds.AcquisitionNumber = 1
        ds.ImagesInAcquisition = geometry.slices  # lets the node start before the quiet period
        ds.ImagePositionPatient = [round(float(v), 4) for v in geometry.position(k)]
        ds.ImageOrientationPatient = [*geometry.row_cosine, *geometry.column_cosine]
        ds.SliceLocation = round(float(geometry.position(k) @ geometry.normal), 4)
        ds.PixelSpacing = [round(v, 6) for v in geometry.pixel_spacing]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = geometry.rows, geometry.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = 1000, 2000
        ds.PixelData = np.ascontiguousarray(image.pixels[k]).tobytes()
        datasets.append(ds)
    return datasets


def ground_truth(image: SeriesImage, phantom: Phantom) -> list[dict[str, object]]:
    """One row per labelled 3D component on the T2 grid: class, volume (mm3), slices."""
    geometry = image.geometry
    voxel = geometry.pixel_spacing[0] * geometry.pixel_spacing[1] * geometry.slice_spacing
    rows = []
    for region in regionprops(label(image.labels > 0, connectivity=2), intensity_image=image.labels):
        values = image.labels[tuple(region.coords.T)]
        lesion_class = "LACI" if np.bincount(values).argmax() == 2 else "FCI"
        slices = sorted({int(k) for k in region.coords[:, 0]})
        rows.append({
            "class": lesion_class,
            "volume_mm3": round(float(region.area) * voxel, 1),
            "slices": slices,
            "centroid": [round(float(c), 1) for c in region.centroid],
        })
    return rows


def write_study(
    out: Path,
    seed: int,
    t2_geometry: StackGeometry | None = None,
    t1_geometry: StackGeometry | None = None,
    include_t1: bool = True,
    lesion_count: int | None = None,
    shuffle_instance_numbers: bool = False,
    varied: bool = False,
    realistic: bool = False,
    min_cnr: float = 0.0,
) -> SyntheticStudy:
    """Render one subject and write its series under ``out``; ``varied`` draws the subject
    from the richer generator (see :func:`training.phantom.make_phantom`), ``realistic`` from
    the realistic one (:func:`training.phantom.make_realistic_phantom`; ``lesion_count`` is
    then drawn; ``min_cnr``: see there, training only)."""
    t2_geometry = t2_geometry or axial_geometry()
    t1_geometry = t1_geometry or t2_geometry
    phantom = (make_realistic_phantom(seed, t2_geometry, min_cnr) if realistic
               else make_phantom(seed, t2_geometry, lesion_count, varied=varied))
    rng = np.random.default_rng(seed)
    study_uid, frame_uid = str(generate_uid()), str(generate_uid())
    when = datetime(2026, 1, 1, 8, 0, 0)
    contrasts = [(Contrast.T2_FLAIR, t2_geometry)]
    if include_t1:
        contrasts.append((Contrast.T1_FLAIR, t1_geometry))
    files: dict[Contrast, list[Path]] = {}
    truth: list[dict[str, object]] = []
    for offset, (contrast, geometry) in enumerate(contrasts):
        image = render_series(phantom, geometry, contrast, seed_offset=offset)
        order = rng.permutation(geometry.slices) if shuffle_instance_numbers else None
        folder = out / contrast.value
        folder.mkdir(parents=True, exist_ok=True)
        files[contrast] = []
        for ds in series_datasets(image, contrast, seed, study_uid, frame_uid, when, order):
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[contrast].append(path)
        if contrast is Contrast.T2_FLAIR:
            truth = ground_truth(image, phantom)
            np.save(out / "labels.npy", image.labels)
    (out / "ground_truth.json").write_text(
        json.dumps({"study_instance_uid": study_uid, "seed": seed, "lesions": truth}, indent=2)
    )
    return SyntheticStudy(out, study_uid, files, truth)


def write_studies(out: Path, subjects: int, seed: int) -> list[SyntheticStudy]:
    return [
        write_study(out / f"subject-{n:03d}", seed * 1000 + n) for n in range(subjects)
    ]


def multiframe_series(paths: list[Path], enhanced: bool = True) -> Dataset:
    """One multi-frame instance holding the single-frame series at ``paths`` (a new series):
    Legacy Converted Enhanced MR as highdicom converts it, or (``enhanced``) Enhanced MR Image
    Storage with the MR timing, echo and modifier functional groups a scanner writes."""
    import highdicom as hd
    from pydicom.uid import EnhancedMRImageStorage

    sources = [dcmread(path) for path in paths]
    converted = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources, series_instance_uid=str(generate_uid()), series_number=int(sources[0].SeriesNumber),
        sop_instance_uid=str(generate_uid()), instance_number=1,
    )
    dataset = Dataset()
    dataset.update(converted)
    dataset.file_meta = converted.file_meta
    if not enhanced:
        return dataset
    first = sources[0]
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    dataset.EchoPulseSequence = "SPIN"
    dataset.MultipleSpinEcho = "NO"
    dataset.PhaseContrast = "NO"
    dataset.SteadyStatePulseSequence = "NONE"
    dataset.EchoPlanarPulseSequence = "NO"
    shared = dataset.SharedFunctionalGroupsSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    timing, echo, modifier = Dataset(), Dataset(), Dataset()
    timing.RepetitionTime = first.RepetitionTime
    timing.FlipAngle = first.FlipAngle
    timing.EchoTrainLength = first.EchoTrainLength
    echo.EffectiveEchoTime = first.EchoTime
    modifier.InversionRecovery = "YES"
    modifier.InversionTimes = [float(first.InversionTime)]
    shared.MRTimingAndRelatedParametersSequence = [timing]
    shared.MREchoSequence = [echo]
    shared.MRModifierSequence = [modifier]
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        del frame.UnassignedPerFrameConvertedAttributesSequence
        del frame.ConversionSourceAttributesSequence
    return dataset
