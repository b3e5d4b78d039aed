"""The round trip with Orthanc as the PACS: Orthanc holds a synthetic study and sends it to
Lacuna (/modalities/.../store); Lacuna returns SEG, SR, GSPS and key images to Orthanc by
C-STORE or, in the second case, by STOW-RS; Orthanc's REST API shows them in the same study,
and each downloads back valid (dciodvfy) and readable (highdicom)."""

from __future__ import annotations

import json
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select

from harness.peers import local_settings
from node.app import EmbeddedNode
from node.cli import EXIT_OK, main
from node.config import Destination
from node.db.tables import AuditEvent, Delivery, Job
from node.domain.delivery import DeliveryState
from node.domain.jobs import JobState
from node.results.readback import read_report_statements
from tests.conftest import dciodvfy_errors, wait_for
from tests.e2e.conftest import Orthanc

pytestmark = pytest.mark.e2e

ALL_KINDS = ("SEG", "SR", "GSPS", "SC")
RESULT_MODALITIES = {"SEG", "SR", "PR", "OT", "KO"}


def result_series(orthanc: Orthanc, study_id: str) -> dict[str, list[str]]:
    """Orthanc's instance ids of the study's result series, by modality."""
    found: dict[str, list[str]] = {}
    series = orthanc.rest("GET", f"/studies/{study_id}/series")
    assert isinstance(series, list)
    for item in series:
        modality = item["MainDicomTags"].get("Modality", "")
        if modality in RESULT_MODALITIES:
            found.setdefault(modality, []).extend(item["Instances"])
    return found


@pytest.mark.parametrize("protocol", ["C-STORE", "STOW-RS"])
def test_round_trip_with_orthanc(  # type: ignore[no-untyped-def]
    orthanc: Orthanc, synthetic_study, tmp_path: Path, protocol: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    if protocol == "C-STORE":
        destination = Destination("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port,
                                  objects=ALL_KINDS)
    else:
        destination = Destination("orthanc-web", url=orthanc.dicomweb_url, objects=ALL_KINDS)
    settings = replace(local_settings(tmp_path, 0, stable_seconds=1.0, poll_seconds=0.2),
                       destinations=(destination,))
    # `lacuna destinations echo`: C-ECHO, or a QIDO-RS query for the STOW-RS destination.
    monkeypatch.setenv("LACUNA_DESTINATIONS", json.dumps([
        {key: value for key, value in vars(destination).items() if value not in (None, "", 0)}]))
    assert main(["--json", "destinations", "echo"]) == EXIT_OK
    [echoed] = json.loads(capsys.readouterr().out)
    assert echoed["ok"] and echoed["detail"] == (
        "C-ECHO success" if protocol == "C-STORE" else "QIDO-RS success")
    node = EmbeddedNode(settings)
    node.start()
    try:
        [study_id] = orthanc.upload(synthetic_study.folder)
        orthanc.add_modality("lacuna", "LACUNA", node.port)
        answer = orthanc.rest("POST", "/modalities/lacuna/store",
                              {"Resources": [study_id], "Synchronous": True})
        assert isinstance(answer, dict) and answer["FailedInstancesCount"] == 0

        def delivered() -> list[Delivery] | None:
            # The worker delivers before it marks the job done (with its findings) in its own
            # commit, so wait for both.
            with node.database.sessions.begin() as session:
                rows = list(session.scalars(select(Delivery)))
                done = session.scalar(select(Job.state)) == JobState.DONE
            return rows if done and all(d.state == DeliveryState.DELIVERED for d in rows) else None

        deliveries = wait_for(delivered, timeout_s=240)
        with node.database.sessions.begin() as session:
            audit = list(session.scalars(select(AuditEvent).where(
                AuditEvent.action == "delivery.succeeded")))
            [job] = session.scalars(select(Job))
            lesions = sum((job.findings or {}).values())
    finally:
        node.stop()

    # SEG, SR, GSPS and the key images sit in the study Orthanc sent.
    found = result_series(orthanc, study_id)
    assert set(found) == RESULT_MODALITIES - {"KO"}  # no re-run: nothing withdrawn
    assert {event.details["protocol"] for event in audit} == {protocol}
    assert len(audit) == len(deliveries) == sum(len(ids) for ids in found.values())
    study = orthanc.rest("GET", f"/studies/{study_id}")
    assert isinstance(study, dict)
    assert study["MainDicomTags"]["StudyInstanceUID"] == synthetic_study.study_instance_uid

    downloaded = tmp_path / "from-orthanc"
    downloaded.mkdir()
    for modality, ids in found.items():
        for instance_id in ids:
            path = downloaded / f"{modality}-{instance_id}.dcm"
            data = orthanc.rest_bytes("GET", f"/instances/{instance_id}/file")
            path.write_bytes(data)
            assert dciodvfy_errors(path, warnings=True) == [], (modality, path)
            dataset = dcmread(path)
            assert dataset.StudyInstanceUID == synthetic_study.study_instance_uid
            if modality == "SEG":
                assert len(hd.seg.segread(path).SegmentSequence) >= 1
            elif modality == "SR":
                groups, statements = read_report_statements(path)
                assert groups == lesions > 0
                assert any("Not for clinical use" in s for s in statements)
            elif modality == "PR":
                assert dataset.GraphicAnnotationSequence
            else:
                assert hd.imread(path).BurnedInAnnotation == "YES"


def test_a_rerun_withdraws_the_earlier_results_at_orthanc(  # type: ignore[no-untyped-def]
    orthanc: Orthanc, synthetic_study, tmp_path: Path,
) -> None:
    destination = Destination("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port,
                              objects=("SEG", "SR", "KOS"))
    settings = replace(local_settings(tmp_path, 0, stable_seconds=1.0, poll_seconds=0.2),
                       destinations=(destination,))
    node = EmbeddedNode(settings)
    node.start()

    def finished(runs: int) -> bool:
        with node.database.sessions.begin() as session:
            jobs = list(session.scalars(select(Job)))
            pending = [d for d in session.scalars(select(Delivery))
                       if d.state != DeliveryState.DELIVERED]
        return len(jobs) == runs and all(j.state == JobState.DONE for j in jobs) and not pending

    try:
        [study_id] = orthanc.upload(synthetic_study.folder)
        orthanc.add_modality("lacuna", "LACUNA", node.port)
        orthanc.rest("POST", "/modalities/lacuna/store",
                      {"Resources": [study_id], "Synchronous": True})
        wait_for(lambda: finished(1), timeout_s=240)
        first = result_series(orthanc, study_id)
        # A T2 FLAIR slice arrives again, changed (a late correction at the scanner): run 2.
        late = dcmread(sorted((synthetic_study.folder / "T2_FLAIR").glob("*.dcm"))[0])
        late.ImageComments = "re-sent after a correction"
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(str(late.SOPClassUID))
        association = ae.associate("127.0.0.1", node.port, ae_title="LACUNA")
        assert association.is_established
        assert association.send_c_store(late).Status == 0x0000
        association.release()
        wait_for(lambda: finished(2), timeout_s=240)
    finally:
        node.stop()

    # Orthanc holds both sets (it does not act on IOCM itself) and the rejection note that
    # withdraws the first; the new SR names the first as its predecessor.
    found = result_series(orthanc, study_id)
    assert len(found["SR"]) == 2 and len(found["SEG"]) == len(first["SEG"]) * 2
    [note_id] = found["KO"]
    note = dcmread(BytesIO(orthanc.rest_bytes("GET", f"/instances/{note_id}/file")))
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodeMeaning) == ("113001", "Rejected for Quality Reasons")
    first_uids = {orthanc.rest("GET", f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]  # type: ignore[index]
                  for ids in first.values() for i in ids}
    listed = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
              for item in note.ContentSequence if item.ValueType in ("IMAGE", "COMPOSITE")}
    assert listed == first_uids
    [new_sr_id] = [i for i in found["SR"] if i not in first["SR"]]
    new_sr = dcmread(BytesIO(orthanc.rest_bytes("GET", f"/instances/{new_sr_id}/file")))
    predecessor = new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in first_uids
