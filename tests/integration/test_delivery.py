"""The delivery queue against a real C-STORE peer (dcmtk storescp): per object and destination
states, backoff, dead-lettering, `lacuna deliveries retry`, transfer syntax per destination,
and concurrent delivering workers sending each object once."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, select

from harness.peers import free_port, start_storescp
from models.package import default_package_dir
from node.cli import EXIT_OK, main
from node.config import Destination, WorkerSettings
from node.db.engine import SessionFactory
from node.db.tables import AuditEvent, Delivery, Job, ResultObject
from node.domain.delivery import DeliveryState
from node.domain.jobs import JobState
from node.domain.lesions import LesionClass
from node.results.fallbacks import build_presentation_state
from node.results.seg import build_segmentation, segment_numbers
from node.results.sr import build_report
from node.services import registry
from node.services.export import Exporter
from node.services.volumes import load_study_volumes
from tests.conftest import wait_for
from tests.e2e.conftest import Pacs
from tests.integration.test_queue import add_study
from tests.integration.test_results import MODEL, NODE, truth_segmentation
from training.phantom import Contrast

FAST = WorkerSettings(retry_base_seconds=0.05, retry_max_seconds=0.1, delivery_max_attempts=3)


def job_with_results(sessions: SessionFactory, root: Path, study) -> int:  # type: ignore[no-untyped-def]
    """A finished job whose SEG, SR and GSPS (built from the study's ground truth) are stored."""
    volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], study.series[Contrast.T1_FLAIR])
    result = truth_segmentation(np.load(study.folder / "labels.npy"),
                                {1: LesionClass.FCI, 2: LesionClass.LACI})
    seg = build_segmentation(volumes.t2_datasets, result, MODEL, str(generate_uid()), str(generate_uid()),
                             node=NODE)
    sr = build_report(volumes.t2_instances, result.lesions, seg, segment_numbers(result),
                      str(volumes.t2_datasets[0].SeriesInstanceUID), MODEL, None,
                      str(generate_uid()), str(generate_uid()), node=NODE)
    gsps = build_presentation_state(volumes.t2_datasets, volumes.t2, result, MODEL,
                                    str(generate_uid()), str(generate_uid()), node=NODE)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        model = registry.ensure_default(session, default_package_dir())
        assert model is not None
        row = add_study(session, study.study_instance_uid, now, None)
        job = Job(study_id=row.id, model_version_id=model.id, state=JobState.DONE, attempts=1,
                  created_at=now)
        session.add(job)
        session.flush()
        for kind, dataset in (("SEG", seg), ("SR", sr), ("GSPS", gsps)):
            relative = Path("results") / f"{dataset.SOPInstanceUID}.dcm"
            (root / "results").mkdir(parents=True, exist_ok=True)
            dataset.save_as(root / relative, enforce_file_format=True)
            session.add(ResultObject(job_id=job.id, kind=kind, sop_class_uid=dataset.SOPClassUID,
                                     sop_instance_uid=dataset.SOPInstanceUID,
                                     series_instance_uid=dataset.SeriesInstanceUID,
                                     path=str(relative), created_at=now))
        return job.id


def states(sessions: SessionFactory) -> dict[tuple[str, str], tuple[str, int]]:
    with sessions.begin() as session:
        rows = session.execute(select(Delivery, ResultObject.kind).join(
            ResultObject, ResultObject.id == Delivery.result_object_id))
        return {(kind, d.destination): (d.state, d.attempts) for d, kind in rows}


def actions(sessions: SessionFactory) -> Counter[str]:
    with sessions.begin() as session:
        return Counter(session.scalars(select(AuditEvent.action).where(
            AuditEvent.action.like("delivery.%"))))


def test_dead_letter_then_retry_by_the_admin(  # type: ignore[no-untyped-def]
    sessions, engine: Engine, synthetic_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "storage"
    job_id = job_with_results(sessions, root, synthetic_study)
    port = free_port()  # nothing listens there yet
    destinations = (
        Destination("pacs", "PACS", "127.0.0.1", port),  # SEG and SR
        Destination("viewer", "PACS", "127.0.0.1", port, objects=("GSPS",),
                    transfer_syntaxes=(str(ImplicitVRLittleEndian),)),
    )
    exporter = Exporter(sessions, root, destinations, "LACUNA", FAST)
    assert exporter.enqueue(job_id) == 3
    assert exporter.enqueue(job_id) == 0  # idempotent: a retried job does not send twice
    assert set(states(sessions)) == {("SEG", "pacs"), ("SR", "pacs"), ("GSPS", "viewer")}

    # Down: each delivery is tried three times with backoff, then dead-lettered.
    wait_for(lambda: exporter.deliver_due() == 0 and all(
        state == DeliveryState.DEAD for state, _ in states(sessions).values()), timeout_s=60,
        interval_s=0.05)
    assert {attempts for _, attempts in states(sessions).values()} == {3}
    assert actions(sessions) == Counter({"delivery.queued": 3, "delivery.failed": 6,
                                         "delivery.dead_lettered": 3})
    with sessions.begin() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "delivery.failed")).first()
        assert failed is not None and failed.details["retry_in_seconds"] is not None
        assert failed.details["protocol"] == "C-STORE" and "refused" in failed.details["error"]

    # The admin sees them and queues them again once the PACS is back.
    monkeypatch.setenv("LACUNA_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("LACUNA_DESTINATIONS", "[]")
    assert main(["--json", "deliveries", "list", "--state", "dead"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert sorted(row["kind"] for row in listed) == ["GSPS", "SEG", "SR"]
    process = start_storescp(tmp_path / "pacs", port)
    try:
        assert main(["deliveries", "retry"]) == EXIT_OK
        assert "3 dead-lettered deliveries queued again" in capsys.readouterr().out
        assert exporter.deliver_due() == 3
        received = wait_for(lambda: (r := Pacs(tmp_path / "pacs", port).received())
                            and sum(map(len, r.values())) == 3 and r)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert {state for state, _ in states(sessions).values()} == {DeliveryState.DELIVERED}
    assert actions(sessions)["delivery.requeued"] == 3
    assert actions(sessions)["delivery.succeeded"] == 3
    with sessions.begin() as session:
        requeued = session.scalars(select(AuditEvent).where(AuditEvent.action == "delivery.requeued")).first()
        assert requeued is not None and requeued.actor.startswith("admin")
    # The viewer asked for implicit VR only: the GSPS went (and was stored) that way.
    [gsps] = received["PR"]
    assert dcmread(gsps).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert dcmread(received["SEG"][0]).file_meta.TransferSyntaxUID != ImplicitVRLittleEndian
    assert main(["deliveries", "retry", "999"]) == 1  # nothing dead by that id


def test_concurrent_delivery_workers_send_each_object_once(  # type: ignore[no-untyped-def]
    sessions, synthetic_study, tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    port = free_port()
    destinations = tuple(Destination(f"pacs{n}", "PACS", "127.0.0.1", port,
                                     objects=("SEG", "SR", "GSPS")) for n in range(4))
    job_id = job_with_results(sessions, root, synthetic_study)
    exporters = [Exporter(sessions, root, destinations, "LACUNA", FAST) for _ in range(3)]
    assert exporters[0].enqueue(job_id) == 12
    process = start_storescp(tmp_path / "pacs", port)
    try:
        threads = [threading.Thread(target=e.deliver_due, kwargs={"limit": 2}) for e in exporters
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        while exporters[0].deliver_due():
            pass
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert {state for state, _ in states(sessions).values()} == {DeliveryState.DELIVERED}
    assert {attempts for _, attempts in states(sessions).values()} == {1}
    assert actions(sessions) == Counter({"delivery.queued": 12, "delivery.succeeded": 12})
