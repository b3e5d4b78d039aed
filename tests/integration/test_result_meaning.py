"""What the result objects mean (issue 23): each SR lesion group references its own segment,
which carries the group's Tracking ID and UID and holds exactly its volume; every object files
under the source's patient and study; the disclaimer is never cut; one window explanation per
window; the algorithm and the installation identified the standard way; the SR's image library
holds only what the findings reference; 0 errors and 0 warnings from dciodvfy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from node.domain.lesions import LesionClass
from node.results import codes
from node.results.fallbacks import build_key_images, build_presentation_state, shown_slices
from node.results.patient import PATIENT_AND_STUDY
from node.results.readback import segmentation_pixels
from node.results.seg import build_segmentation, new_tracking_uids, segment_numbers, tracking_id
from node.results.sr import build_report
from node.services.volumes import load_study_volumes, read_series, source_slices
from tests.conftest import dciodvfy_errors
from tests.integration.test_results import MODEL, NODE, truth_segmentation, write
from training.phantom import Contrast


def identified_source(files: list[Path], out: Path) -> list[Path]:
    """``files`` rewritten with the patient and study attributes a hospital's images carry:
    an issuer of the patient ID, other patient IDs, an accession number and its issuer, a study
    description and UTF-8 names."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        ds = dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Zoë"
        ds.ReferringPhysicianName = "Ødegård^Ærling"
        ds.IssuerOfPatientID = "HOSPITAL-A"
        other = Dataset()
        other.PatientID = "X-4711"
        other.IssuerOfPatientID = "REGION-B"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = DicomSequence([other])
        ds.AccessionNumber = "ACC16CHARSXXXXXX"
        issuer = Dataset()
        issuer.LocalNamespaceEntityID = "RIS-A"
        ds.IssuerOfAccessionNumberSequence = DicomSequence([issuer])
        ds.StudyDescription = "MR Gehirn nativ"
        ds.StudyID = "S-17"
        target = out / path.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


@pytest.fixture(scope="module")
def results(synthetic_study, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("meaning")
    t2 = identified_source(synthetic_study.series[Contrast.T2_FLAIR], folder / "t2")
    t1 = identified_source(synthetic_study.series[Contrast.T1_FLAIR], folder / "t1")
    volumes = load_study_volumes(t2, t1)
    labels = np.load(synthetic_study.folder / "labels.npy")
    result = truth_segmentation(labels, {1: LesionClass.FCI, 2: LesionClass.LACI})
    tracking = new_tracking_uids(result)
    slices = list(zip(volumes.t2_datasets, volumes.t2_frames, strict=True))
    seg = build_segmentation(volumes.t2_datasets, result, MODEL, str(generate_uid()),
                             str(generate_uid()), node=NODE, tracking_uids=tracking)
    sr = build_report(volumes.t2_instances + volumes.t1_instances, result.lesions, seg,
                      segment_numbers(result), str(volumes.t2_datasets[0].SeriesInstanceUID),
                      MODEL, None, str(generate_uid()), str(generate_uid()),
                      tracking_uids=tracking, source_slices=slices, node=NODE)
    gsps = build_presentation_state(volumes.t2_datasets, volumes.t2, result, MODEL,
                                    str(generate_uid()), str(generate_uid()), tracking_uids=tracking,
                                    node=NODE)
    images = build_key_images(volumes.t2_datasets, volumes.t2, result, MODEL, str(generate_uid()),
                              [str(generate_uid()) for _ in shown_slices(result)], node=NODE)
    paths = {"SEG": write(seg, folder / "seg.dcm"), "SR": write(sr, folder / "sr.dcm"),
             "GSPS": write(gsps, folder / "gsps.dcm"),
             "SC": write(images[0], folder / "sc.dcm")}
    return {"paths": paths, "result": result, "tracking": tracking, "t2": t2,
            "source": dcmread(t2[0]), "voxel_mm3": 4.0}


def test_every_object_is_valid_without_a_warning(results) -> None:  # type: ignore[no-untyped-def]
    for kind, path in results["paths"].items():
        assert dciodvfy_errors(path, warnings=True) == [], kind


def test_each_lesion_group_references_its_own_segment(results) -> None:  # type: ignore[no-untyped-def]
    result, tracking = results["result"], results["tracking"]
    seg = hd.seg.segread(results["paths"]["SEG"])
    assert len(seg.SegmentSequence) == len(result.lesions)  # one segment per lesion, by default
    segments = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    planes = read_series(results["t2"]).planes
    pixels = segmentation_pixels(seg, source_slices(planes))
    report = cast(hd.sr.MeasurementReport, hd.sr.srread(results["paths"]["SR"]).content)
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(result.lesions)
    lesion_by_tracking = {tracking_id(lesion.number): lesion for lesion in result.lesions}
    for group in groups:
        lesion = lesion_by_tracking[group.tracking_identifier]
        [number] = group.referenced_segment.referenced_segment_numbers
        segment = segments[number]
        # The segment is the lesion's: same Tracking ID and UID, labelled by class and number,
        # coloured by class.
        assert segment.TrackingID == group.tracking_identifier
        assert segment.TrackingUID == group.tracking_uid == tracking[lesion.number]
        assert segment.SegmentLabel.startswith(f"Lesion {lesion.number}: ")
        assert codes.SEGMENT_LABEL[lesion.lesion_class] in segment.SegmentLabel
        # and its voxels are exactly the group's volume.
        volume = {m.name.value: m.value for m in group.get_measurements()}[codes.VOLUME.value]
        voxels = int(np.count_nonzero(pixels[..., number - 1]))
        assert voxels == lesion.voxel_count
        assert volume == pytest.approx(round(voxels * results["voxel_mm3"], 2))


def test_every_object_files_under_the_source_patient_and_study(results) -> None:  # type: ignore[no-untyped-def]
    source = results["source"]
    carried = [k for k in PATIENT_AND_STUDY if k in source]
    for needed in ("IssuerOfPatientID", "OtherPatientIDsSequence", "AccessionNumber",
                   "IssuerOfAccessionNumberSequence", "StudyDescription", "PatientName"):
        assert needed in carried
    for kind, path in results["paths"].items():
        made = dcmread(path)
        assert made.StudyInstanceUID == source.StudyInstanceUID, kind
        for keyword in carried:
            assert made[keyword].value == source[keyword].value, (kind, keyword)
        assert str(made.PatientName) == "Müller^Zoë", kind  # UTF-8, declared as such
        assert "ISO_IR 192" in made.SpecificCharacterSet, kind


def test_the_disclaimer_is_never_cut(results) -> None:  # type: ignore[no-untyped-def]
    phrase = codes.NOT_FOR_CLINICAL_USE
    seg, gsps = dcmread(results["paths"]["SEG"]), dcmread(results["paths"]["GSPS"])
    sc = dcmread(results["paths"]["SC"])
    carried = [seg.ContentDescription, gsps.ContentDescription,
               gsps.GraphicLayerSequence[0].GraphicLayerDescription, sc.DerivationDescription]
    for dataset in (seg, gsps, sc):
        carried += [item.ContributionDescription for item in dataset.ContributingEquipmentSequence
                    if item.get("Manufacturer") == codes.MANUFACTURER]
    for text in carried:
        assert str(text).endswith(phrase), text
    statements = [str(item.TextValue) for item in
                  dcmread(results["paths"]["SR"]).ContentSequence[-1].ContentSequence]
    assert any("Not for clinical use" in s for s in statements)
    with pytest.raises(ValueError, match="LO holds 64"):
        codes.within("x" * 65, "LO")


def test_one_window_explanation_per_window(results) -> None:  # type: ignore[no-untyped-def]
    gsps = dcmread(results["paths"]["GSPS"])
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert voi.WindowCenterWidthExplanation == "Lacuna brain window"  # one value, not 19
    assert voi["WindowCenterWidthExplanation"].VM == 1


def test_algorithm_and_installation_are_identified(results) -> None:  # type: ignore[no-untyped-def]
    seg = dcmread(results["paths"]["SEG"])
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmName == MODEL.name
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL.name, MODEL.version)
    assert seg.DeviceSerialNumber == NODE.serial_number
    sr = hd.sr.srread(results["paths"]["SR"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    raw = dcmread(results["paths"]["SR"])
    device = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in raw.ContentSequence
              if item.ValueType in ("UIDREF", "TEXT")}
    assert device["Device Observer UID"].UID == NODE.device_uid
    assert device["Device Observer Serial Number"].TextValue == NODE.serial_number
    report = cast(hd.sr.MeasurementReport, sr.content)
    for group in report.get_volumetric_roi_measurement_groups():
        names = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in group[0].ContentSequence}
        assert names["Algorithm Name"].TextValue == MODEL.name  # TID 4019 in each group
        assert names["Algorithm Version"].TextValue == MODEL.version


def test_the_image_library_holds_what_the_findings_reference(results) -> None:  # type: ignore[no-untyped-def]
    raw = dcmread(results["paths"]["SR"])
    [library] = [item for item in raw.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"]
    referenced = {str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for group in library.ContentSequence for entry in group.ContentSequence
                  if entry.ValueType == "IMAGE"}
    planes = read_series(results["t2"]).planes
    lesion_slices = {k for lesion in results["result"].lesions for k in lesion.slices}
    assert referenced == {planes[k].sop_instance_uid for k in lesion_slices}
    # Every image read stays in the evidence.
    evidence = {str(i.ReferencedSOPInstanceUID) for s in raw.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert {p.sop_instance_uid for p in planes} <= evidence


def dcmqi_tool(name: str) -> str:
    """A dcmqi command (PyPI dcmqi, a dev dependency) beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed; `make test` installs dcmqi")
    return str(path)


def test_dcmqi_reads_each_lesion_with_its_own_segment(results, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What 3D Slicer reads SEG and SR with: tid1500reader and segimage2itkimage."""
    paths = results["paths"]
    subprocess.run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(paths["SR"]),
                    "--outputMetadata", str(tmp_path / "sr.json")],
                   check=True, capture_output=True, timeout=120)
    groups = [m for m in json.loads((tmp_path / "sr.json").read_text())["Measurements"]
              if m["TrackingIdentifier"] != "Study summary"]
    segments = {int(s.SegmentNumber): s for s in dcmread(paths["SEG"]).SegmentSequence}
    assert len(groups) == len(results["result"].lesions) == len(segments)
    for group in groups:
        segment = segments[int(group["ReferencedSegment"])]
        assert segment.TrackingUID == group["TrackingUniqueIdentifier"]
        assert segment.TrackingID == group["TrackingIdentifier"]
        assert group["measurementAlgorithmIdentification"] == {
            "AlgorithmName": MODEL.name, "AlgorithmVersion": MODEL.version}
    out = tmp_path / "seg"
    out.mkdir()
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(paths["SEG"]),
                    "--outputDirectory", str(out)], check=True, capture_output=True, timeout=120)
    assert len(list(out.glob("*.nrrd"))) == len(segments)  # one label image per lesion
