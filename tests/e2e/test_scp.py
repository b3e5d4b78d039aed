"""The SCP against dcmtk peers: echo, refusals with failure statuses, the calling-AE list."""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.app import EmbeddedNode
from node.db.tables import AuditEvent, Instance
from tests.conftest import require_tool, wait_for
from tests.e2e.conftest import ENGINES, Pacs, node_settings, storescu
from training.synth import write_study

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("engine", ENGINES)]


def echoscu(port: int, calling_ae: str = "SCANNER") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-aet", calling_ae, "-aec", "LACUNA", "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60,
    )


def audit_actions(node: EmbeddedNode) -> list[str]:
    with node.database.sessions.begin() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return write_study(tmp_path_factory.mktemp("small"), seed=5, include_t1=False, lesion_count=1)


def test_echo(node: EmbeddedNode, engine: str) -> None:
    assert echoscu(node.port).returncode == 0
    assert "association.accepted" in audit_actions(node)


def test_bad_instances_get_failure_statuses_and_the_node_keeps_serving(
    node: EmbeddedNode, small_study, tmp_path: Path, engine: str  # type: ignore[no-untyped-def]
) -> None:
    source = small_study.series[next(iter(small_study.series))][0]
    short_pixels = tmp_path / "short.dcm"
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999.1"
    dataset.PixelData = dataset.PixelData[:1000]
    dataset.save_as(short_pixels)
    traversal = tmp_path / "traversal.dcm"
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999.2"
    with warnings.catch_warnings():  # pydicom may warn about the invalid UID we mean to send
        warnings.simplefilter("ignore")
        dataset.StudyInstanceUID = "1.2.3/../../../etc"
    dataset.save_as(traversal)

    for path in (short_pixels, traversal):
        result = storescu(node.port, path, "-v")
        assert result.returncode != 0
        assert "Received Store Response (Error: CannotUnderstand)" in result.stderr

    assert echoscu(node.port).returncode == 0  # still serving
    assert storescu(node.port, source).returncode == 0  # and still storing
    with node.database.sessions.begin() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    assert "1.2.3.999.1" not in stored and "1.2.3.999.2" not in stored
    assert str(pydicom.dcmread(source).SOPInstanceUID) in stored
    with node.database.sessions.begin() as session:
        refusals = list(session.scalars(
            select(AuditEvent).where(AuditEvent.action == "instance.refused")))
    assert [r.details["status"] for r in refusals] == ["0xC000", "0xC000"]
    assert "pixel data has 1000 bytes" in refusals[0].details["reason"]
    assert "StudyInstanceUID is not a valid UID" in refusals[1].details["reason"]
    assert not any(".." in str(p) for p in (node.settings.storage.root).rglob("*"))


def test_unknown_calling_ae_is_rejected(tmp_path: Path, pacs: Pacs, engine: str) -> None:
    node = EmbeddedNode(node_settings(tmp_path, pacs, allowed=("SCANNER",), engine=engine))
    node.start()
    try:
        assert echoscu(node.port, calling_ae="INTRUDER").returncode != 0
        assert echoscu(node.port, calling_ae="SCANNER").returncode == 0
        actions = audit_actions(node)
    finally:
        node.stop()
    assert actions.count("association.rejected") == 1
    assert actions.count("association.accepted") == 1


def test_a_calling_ae_is_refused_from_a_host_it_is_not_configured_for(
    tmp_path: Path, pacs: Pacs, engine: str
) -> None:
    settings = node_settings(tmp_path, pacs, allowed=("SCANNER", "PACS1", "MRI2"), engine=engine)
    hosts = {"SCANNER": ("10.20.30.40", "192.168.0.0/16"), "PACS1": ("127.0.0.0/8",),
             "MRI2": ("localhost",)}
    node = EmbeddedNode(replace(settings, scp=replace(settings.scp, calling_ae_hosts=hosts)))
    node.start()
    try:
        refused = echoscu(node.port, calling_ae="SCANNER")  # right title, wrong host
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert echoscu(node.port, calling_ae="PACS1").returncode == 0  # in the network
        assert echoscu(node.port, calling_ae="MRI2").returncode == 0  # a host name
        assert echoscu(node.port, calling_ae="SCANNER").returncode != 0  # still serving, still no

        def rejections() -> list[AuditEvent] | None:
            # The rejection is audited by the association's thread, which may still be
            # committing when echoscu, already refused, exits.
            with node.database.sessions.begin() as session:
                rows = list(session.scalars(
                    select(AuditEvent).where(AuditEvent.action == "association.rejected")))
            return rows if len(rows) >= 2 else None

        rejected = wait_for(rejections, timeout_s=10)
    finally:
        node.stop()
    assert [event.calling_ae for event in rejected] == ["SCANNER", "SCANNER"]
    assert rejected[0].details["reason"] == "calling AE title not allowed from this host"
