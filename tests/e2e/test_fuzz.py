"""Fuzzing the SCP (hypothesis): valid MR datasets with flipped, inserted or cut bytes are sent
over a real association. Whatever arrives, the node answers a named status, never answers
success for something it did not store whole, and keeps serving."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage, Verification
from sqlalchemy import select

from node.app import EmbeddedNode
from node.db.tables import Instance
from node.dicom.status import Status
from tests.e2e.conftest import ENGINES, Pacs, node_settings

pytestmark = pytest.mark.e2e

NAMED = {int(status) for status in Status}


@pytest.fixture(scope="module", params=ENGINES)
def scp_node(tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[EmbeddedNode]:
    folder = tmp_path_factory.mktemp("fuzz")
    node = EmbeddedNode(node_settings(folder, Pacs(folder / "pacs", 1), engine=request.param),
                        process=False)
    node.start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the mutated bytes, not a re-encoding
    yield node
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    node.stop()


def encoded_file() -> tuple[bytes, bytes, str]:
    """MR_small with a fresh SOP Instance UID as a Part 10 file: (preamble and file meta,
    dataset bytes, the UID)."""
    dataset = dcmread(get_testdata_file("MR_small.dcm"))
    uid = str(generate_uid())
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    raw = buffer.getvalue()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")  # preamble, group length
    return raw[:meta_end], raw[meta_end:], uid


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("cut"), st.integers(0, 10_000), st.integers(1, 4000)),
    ),
    min_size=1, max_size=6,
)


def mutate(data: bytes, changes: list[tuple[str, int, object]]) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in changes:
        position %= max(len(buffer), 1)
        if kind == "flip":
            buffer[position] = int(value)  # type: ignore[call-overload]
        elif kind == "insert":
            buffer[position:position] = value  # type: ignore[assignment]
        else:
            del buffer[position:position + int(value)]  # type: ignore[call-overload]
    return bytes(buffer)


def send_file(port: int, path: Path) -> int | None:
    """C-STORE the file's dataset bytes exactly as they are (pynetdicom's chunked sending
    does not decode them); returns the status, None if there was no answer."""
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="LACUNA")
    assert assoc.is_established, "the node stopped accepting associations"
    try:
        response = assoc.send_c_store(path)
        return int(response.Status) if "Status" in response else None
    finally:
        assoc.release()


def echo(port: int) -> bool:
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="LACUNA")
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=mutations)
def test_mutated_datasets_never_get_a_false_success(
    scp_node: EmbeddedNode, changes: list[tuple[str, int, object]]
) -> None:
    meta, data, uid = encoded_file()
    path = Path(scp_node.settings.storage.root).parent / "fuzz.dcm"
    path.write_bytes(meta + mutate(data, changes))
    status = send_file(scp_node.port, path)
    assert status in NAMED, f"unnamed status {status!r}"
    with scp_node.database.sessions.begin() as session:
        stored = session.scalar(select(Instance).where(Instance.sop_instance_uid == uid))
    if status == Status.SUCCESS:
        assert stored is not None, "success answered for an instance that is not indexed"
        path = Path(scp_node.settings.storage.root) / stored.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stored.sha256
        dcmread(path)  # stored whole: it reads back
    else:
        assert stored is None, "a refused instance was indexed"
    assert echo(scp_node.port)
