"""The asyncio receiver's upper layer on the wire: dcmtk and pynetdicom as SCUs, maximum PDU
sizes both ways, role selection and extended negotiation, release, aborts mid-dataset, the
ARTIM and idle timeouts, and malformed PDUs (a hypothesis test mutating a real association's
bytes). Every case ends with the node still serving and nothing half-kept."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import (
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
)
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from harness import wire
from harness.wire import echo_message, p_data_pdus, read_pdu
from node.config import ScpSettings
from node.db.engine import SessionFactory, build_engine, session_factory, upgrade
from node.db.tables import AuditEvent, Instance
from node.dicom.aioscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, AsyncioScp
from node.services.intake import Intake
from node.services.reception import NodeReception
from tests.conftest import require_tool, wait_for
from training.synth import write_study

MR = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Receiver:
    scp: AsyncioScp
    sessions: SessionFactory
    root: Path

    @property
    def port(self) -> int:
        return int(self.scp.server_address[1])

    def stored(self) -> int:
        with self.sessions.begin() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)

    def actions(self) -> list[str]:
        with self.sessions.begin() as session:
            return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))

    def leftovers(self) -> list[Path]:
        """Temporary dataset files still in the incoming folder."""
        return list((self.root.parent / "incoming").glob("*.dcm"))


def start(tmp_path: Path, **changes: object) -> Receiver:
    engine = build_engine(f"sqlite:///{tmp_path / 'lacuna.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    root = tmp_path / "storage"
    settings = replace(ScpSettings(host="127.0.0.1", port=0, engine="asyncio"), **changes)
    scp = AsyncioScp(settings, NodeReception(Intake(root, sessions), sessions))
    return Receiver(scp.start(), sessions, root)


@pytest.fixture
def incoming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary dataset files go here (as the node puts them on the storage volume)."""
    import tempfile

    folder = tmp_path / "incoming"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def receiver(tmp_path: Path, incoming: Path) -> Iterator[Receiver]:
    running = start(tmp_path, acse_timeout=2.0, network_timeout=3.0)
    yield running
    running.scp.shutdown()


@pytest.fixture(scope="module")
def instance_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = write_study(tmp_path_factory.mktemp("one"), seed=12, include_t1=False, lesion_count=1)
    return next(iter(study.series.values()))[0]


# A raw SCU: pynetdicom's encoders, our own socket, so the bytes can be cut and mutated.

def associate_rq(called: str = "LACUNA", max_pdu: int = 16384,
                 extra: tuple[object, ...] = ()) -> bytes:
    return wire.associate_rq(called, contexts=((MR, (ExplicitVRLittleEndian,)),
                                               (Verification, ())),
                             max_pdu=max_pdu, extra=extra)


def store_message(path: Path, message_id: int = 1) -> C_STORE_RQ:
    dataset = pydicom.dcmread(path)
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = dataset.SOPClassUID
    primitive.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    primitive.Priority = 2
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True)  # no file meta: a dataset
    raw = buffer.getvalue()
    primitive.DataSet = BytesIO(raw)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return message


def connect(port: int) -> socket.socket:
    stream = socket.create_connection(("127.0.0.1", port), timeout=10)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream


def command_statuses(body: bytes) -> list[int]:
    """The Status (0000,0900) of each command PDV in a P-DATA-TF body."""
    statuses = []
    offset = 0
    while offset < len(body):
        length, _context, header = struct.unpack_from(">IBB", body, offset)
        data = body[offset + 6:offset + 4 + length]
        offset += 4 + length
        if header & 1 and b"\x00\x00\x00\x09" in data:
            at = data.index(b"\x00\x00\x00\x09")
            statuses.append(struct.unpack_from("<H", data, at + 8)[0])
    return statuses


def echo_works(port: int) -> bool:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="LACUNA")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


# --- peers --------------------------------------------------------------------------------

@pytest.mark.parametrize("max_pdu_size", [4096, 0])
def test_dcmtk_storescu_with_small_and_unlimited_pdus(
    tmp_path: Path, incoming: Path, instance_file: Path, max_pdu_size: int
) -> None:
    """4 KiB PDUs split a 128 KiB image into ~33 PDUs of one PDV each; 0 takes any size."""
    running = start(tmp_path, max_pdu_size=max_pdu_size)
    try:
        for pdu_option in ("--max-pdu", ):
            sent = subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "LACUNA",
                                   pdu_option, "4096", "127.0.0.1", str(running.port),
                                   str(instance_file)], capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent.stderr
        echo = subprocess.run([require_tool("echoscu"), "-aec", "LACUNA", "127.0.0.1",
                               str(running.port)], capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0
        assert running.stored() == 1
        [kept] = (running.root / "instances").rglob("*.dcm")
        assert pydicom.dcmread(kept).PixelData == pydicom.dcmread(instance_file).PixelData
        assert running.leftovers() == []
    finally:
        running.scp.shutdown()


def test_pynetdicom_scu_sees_our_implementation_roles_and_maximum_pdu(
    tmp_path: Path, incoming: Path, instance_file: Path
) -> None:
    running = start(tmp_path, max_pdu_size=32768)
    try:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(MRImageStorage, [ImplicitVRLittleEndian])
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = MRImageStorage
        role.scu_role, role.scp_role = True, False
        extended = SOPClassExtendedNegotiation()
        extended.sop_class_uid = MRImageStorage
        extended.service_class_application_information = b"\x02\x00\x00\x00\x01\x00"
        assoc = ae.associate("127.0.0.1", running.port, ae_title="LACUNA",
                             ext_neg=[role, extended])
        assert assoc.is_established
        try:
            assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
            assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
            assert assoc.acceptor.maximum_length == 32768
            [context] = assoc.accepted_contexts
            assert context.transfer_syntax == [ImplicitVRLittleEndian]
            assert (context.as_scu, context.as_scp) == (True, False)
            assert assoc.acceptor.sop_class_extended == {}  # not answered: refused cleanly
            assert int(assoc.send_c_store(pydicom.dcmread(instance_file)).Status) == 0
        finally:
            assoc.release()
        assert assoc.is_released
        assert running.stored() == 1
    finally:
        running.scp.shutdown()


def test_an_unsupported_sop_class_and_transfer_syntax_are_refused_per_context(
    receiver: Receiver
) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.1.1")  # Patient Root FIND: not served
    ae.add_requested_context(MRImageStorage, ["1.2.3.4.5.6"])  # an unknown transfer syntax
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="LACUNA")
    assert assoc.is_established
    try:
        results = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        assert results == {"1.2.840.10008.5.1.4.1.2.1.1": 3, MRImageStorage: 4}
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def echoscu(port: int, called: str = "LACUNA") -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("echoscu"), "-aet", "SCANNER", "-aec", called,
                           "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)


def test_wrong_called_ae_and_full_house_are_rejected(tmp_path: Path, incoming: Path) -> None:
    """dcmtk as the requestor: pynetdicom's requestor can miss a rejection that arrives before
    its own thread looks (it then reports an abort), which this fast acceptor provokes."""
    running = start(tmp_path, max_associations=1)
    try:
        wrong = echoscu(running.port, called="SOMEONE")
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", running.port, ae_title="LACUNA")
        assert first.is_established
        full = echoscu(running.port)
        assert full.returncode != 0
        assert "Local Limit Exceeded" in full.stdout + full.stderr  # transient
        first.release()
        assert wait_for(lambda: echoscu(running.port).returncode == 0 or None, timeout_s=10)
        assert running.actions().count("association.rejected") == 2
    finally:
        running.scp.shutdown()


# --- release, abort, timeouts ------------------------------------------------------------

def test_release_gets_a_release_response(receiver: Receiver) -> None:
    with connect(receiver.port) as stream:
        stream.sendall(associate_rq())
        answer = read_pdu(stream)
        assert answer is not None and answer[0] == 0x02
        for pdu in p_data_pdus(echo_message(), 3, 16384):
            stream.sendall(pdu)
        answer = read_pdu(stream)
        assert answer is not None and answer[0] == 0x04 and command_statuses(answer[1]) == [0]
        stream.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert read_pdu(stream) == (0x06, bytes(4))
        assert read_pdu(stream) is None  # and the acceptor closes


def test_abort_mid_dataset_keeps_nothing(receiver: Receiver, instance_file: Path) -> None:
    pdus = p_data_pdus(store_message(instance_file), 1, 4096)
    assert len(pdus) > 4
    with connect(receiver.port) as stream:
        stream.sendall(associate_rq())
        assert read_pdu(stream) is not None
        for pdu in pdus[: len(pdus) // 2]:
            stream.sendall(pdu)
        time.sleep(0.3)
        assert len(receiver.leftovers()) == 1  # the dataset streams to a file as it arrives
        stream.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT, service user
    wait_for(lambda: "association.aborted" in receiver.actions() or None, timeout_s=10)
    assert receiver.leftovers() == []
    assert receiver.stored() == 0
    assert echo_works(receiver.port)


def test_a_bare_connection_is_dropped_after_the_artim_timeout_without_a_slot(
    tmp_path: Path, incoming: Path
) -> None:
    running = start(tmp_path, acse_timeout=1.0, max_associations=1)
    try:
        with connect(running.port) as idle:
            assert echo_works(running.port)  # the idle connection holds no association slot
            started = time.monotonic()
            assert idle.recv(1) == b""  # closed by the acceptor
            assert time.monotonic() - started < 5
    finally:
        running.scp.shutdown()


def test_an_idle_association_is_aborted(receiver: Receiver) -> None:
    with connect(receiver.port) as stream:
        stream.sendall(associate_rq())
        assert read_pdu(stream) is not None
        answer = read_pdu(stream)  # nothing sent for network_timeout (3 s)
        assert answer is not None and answer[0] == 0x07
        assert read_pdu(stream) is None
    assert "association.aborted" in receiver.actions()


def test_a_message_stalled_mid_dataset_is_aborted_after_the_dimse_timeout(
    tmp_path: Path, incoming: Path, instance_file: Path
) -> None:
    running = start(tmp_path, dimse_timeout=1.0, network_timeout=30.0)
    try:
        pdus = p_data_pdus(store_message(instance_file), 1, 4096)
        with connect(running.port) as stream:
            stream.sendall(associate_rq())
            assert read_pdu(stream) is not None
            stream.sendall(b"".join(pdus[:3]))
            started = time.monotonic()
            answer = read_pdu(stream)
            assert answer is not None and answer[0] == 0x07
            assert time.monotonic() - started < 10  # the DIMSE timeout, not the network one
        wait_for(lambda: running.leftovers() == [] or None, timeout_s=10)
        assert running.stored() == 0
    finally:
        running.scp.shutdown()


def test_responses_respect_the_requestors_maximum_pdu(receiver: Receiver) -> None:
    with connect(receiver.port) as stream:
        stream.sendall(associate_rq(max_pdu=32))  # 26 bytes of PDV data per PDU
        assert read_pdu(stream) is not None
        for pdu in p_data_pdus(echo_message(), 3, 16384):
            stream.sendall(pdu)
        command = b""
        while True:
            answer = read_pdu(stream)
            assert answer is not None and answer[0] == 0x04
            assert len(answer[1]) <= 32
            length, _context, header = struct.unpack_from(">IBB", answer[1])
            command += answer[1][6:4 + length]
            if header & 2:
                break
        assert struct.unpack_from("<H", command, command.index(b"\x00\x00\x00\x09") + 8)[0] == 0


@pytest.mark.parametrize(("pdu", "reason"), [
    (b"\x09\x00\x00\x00\x00\x02\x00\x00", 0x01),  # unknown PDU type
    (b"\x01\x00\x00\x00\x00\x02\x00\x00", 0x02),  # a second A-ASSOCIATE-RQ
    (b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x63\x03\x00\x00", 0x06),  # context 99
])
def test_protocol_errors_abort_with_the_reason(receiver: Receiver, pdu: bytes, reason: int
                                               ) -> None:
    with connect(receiver.port) as stream:
        stream.sendall(associate_rq())
        assert read_pdu(stream) is not None
        stream.sendall(pdu)
        answer = read_pdu(stream)
        assert answer == (0x07, bytes((0, 0, 2, reason)))
    wait_for(lambda: "association.aborted" in receiver.actions() or None, timeout_s=10)
    assert echo_works(receiver.port)


# --- malformed PDUs ----------------------------------------------------------------------

mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 200_000), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 200_000), st.integers(1, 64)),
        st.tuples(st.just("insert"), st.integers(0, 200_000), st.binary(min_size=1, max_size=8)),
    ),
    min_size=1, max_size=3,
)


def mutate(stream: bytes, changes: list[tuple[str, int, object]]) -> bytes:
    data = bytearray(stream)
    for kind, at, value in changes:
        at %= len(data)
        if kind == "flip":
            data[at] ^= int(value)  # type: ignore[call-overload]
        elif kind == "cut":
            del data[at:at + int(value)]  # type: ignore[call-overload]
        else:
            data[at:at] = value  # type: ignore[index]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    import tempfile

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "incoming").mkdir()
    before, tempfile.tempdir = tempfile.tempdir, str(folder / "incoming")
    running = start(folder, acse_timeout=1.0, network_timeout=1.0)
    yield running
    running.scp.shutdown()
    tempfile.tempdir = before


# 40 fixed examples in CI; random runs of 200 found a leaked temporary file (fixed), then passed.
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=mutations)
def test_mutated_associations_never_get_a_false_success(
    fuzz_receiver: Receiver, instance_file: Path, changes: list[tuple[str, int, object]]
) -> None:
    """A store's whole byte stream (A-ASSOCIATE-RQ, P-DATA, A-RELEASE-RQ), mutated: whatever
    the receiver answers, a success status means the instance is stored, and it keeps
    serving everyone else."""
    dataset = pydicom.dcmread(instance_file)
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    changed = Path(fuzz_receiver.root.parent / "fuzzed.dcm")
    dataset.save_as(changed, enforce_file_format=True)
    wire = associate_rq() + b"".join(p_data_pdus(store_message(changed), 1, 16384)) + (
        b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    statuses: list[int] = []
    before = fuzz_receiver.stored()
    with connect(fuzz_receiver.port) as stream:
        try:
            stream.sendall(mutate(wire, changes))
            while (answer := read_pdu(stream)) is not None:
                if answer[0] == 0x04:
                    statuses += command_statuses(answer[1])
        except (ConnectionError, TimeoutError):
            pass
    # A mutation may change the UIDs themselves, so count: every success is a new instance.
    assert fuzz_receiver.stored() - before == statuses.count(0)
    assert echo_works(fuzz_receiver.port)
    assert wait_for(lambda: fuzz_receiver.leftovers() == [] or None, timeout_s=10)
