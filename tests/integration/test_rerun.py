"""A re-run withdraws the results it replaces (issue 23): its SR names the earlier SR in its
Predecessor Documents Sequence, the same lesions keep their Tracking UIDs, and an IHE IOCM
rejection note (Key Object Selection, "Rejected for Quality Reasons") lists every replaced
object. The Orthanc round trip of the same is in tests/e2e/test_orthanc_round_trip.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine, select

from node.config import WorkerSettings
from node.db.tables import Job, ResultObject
from node.domain.jobs import JobState
from node.services.processing import Processor, ResultOptions
from node.services.worker import Worker
from tests.conftest import dciodvfy_errors
from tests.integration.test_registry import NoDelivery, truth_run


def test_a_rerun_withdraws_what_it_replaces(engine: Engine, tmp_path: Path, synthetic_study) -> None:  # type: ignore[no-untyped-def]
    run = truth_run(engine, tmp_path, synthetic_study)
    sessions, root, first, truth = run.sessions, run.root, run.job_id, run.truth
    options = ResultOptions(fallbacks=frozenset({"GSPS"}), rejection_notes=True)
    worker = Worker(sessions, Processor(sessions, root, run.engines, options), NoDelivery(),  # type: ignore[arg-type]
                    WorkerSettings(), owner="worker-a")
    assert worker.run_once() is not None
    with sessions.begin() as session:  # a late FLAIR arrival queues run 2 (the scheduler's part)
        earlier = session.get(Job, first)
        assert earlier is not None and earlier.state == JobState.DONE
        rerun = Job(study_id=earlier.study_id, model_version_id=run.version_id, run=2,
                    supersedes_job_id=first, state=JobState.QUEUED, attempts=0,
                    created_at=datetime.now(UTC))
        session.add(rerun)
        session.flush()
        second = rerun.id
    assert worker.run_once() is not None

    def objects(job_id: int) -> dict[str, list[Path]]:
        with sessions.begin() as session:
            rows = session.execute(select(ResultObject.kind, ResultObject.path)
                                   .where(ResultObject.job_id == job_id)).all()
        found: dict[str, list[Path]] = {}
        for kind, path in rows:
            found.setdefault(kind, []).append(root / path)
        return found

    old, new = objects(first), objects(second)
    assert set(old) == {"SEG", "SR", "GSPS"} and set(new) == {"SEG", "SR", "GSPS", "KOS"}
    old_sr, new_sr = dcmread(old["SR"][0]), dcmread(new["SR"][0])

    # The new SR names the one it replaces.
    [predecessor] = new_sr.PredecessorDocumentsSequence
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == old_sr.SOPInstanceUID

    # The same lesions keep their Tracking UIDs, in the SEG segments as in the SR groups.
    old_uids = {str(s.TrackingID): str(s.TrackingUID) for s in dcmread(old["SEG"][0]).SegmentSequence}
    new_uids = {str(s.TrackingID): str(s.TrackingUID) for s in dcmread(new["SEG"][0]).SegmentSequence}
    assert len(new_uids) == len(truth.lesions) and new_uids == old_uids

    # The rejection note lists every object of run 1, titled as IOCM wants, and is valid.
    note = dcmread(new["KOS"][0])
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    listed = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
              for item in note.ContentSequence if item.ValueType in ("IMAGE", "COMPOSITE")}
    assert listed == {str(dcmread(path).SOPInstanceUID) for paths in old.values() for path in paths}
    assert note.StudyInstanceUID == old_sr.StudyInstanceUID
    assert note.PatientID == old_sr.PatientID
    assert dciodvfy_errors(new["KOS"][0], warnings=True) == []
    assert dciodvfy_errors(new["SR"][0], warnings=True) == []
