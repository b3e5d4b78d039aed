from pathlib import Path

import pytest

from node.dicom.storage import InvalidUid, checked_uid, relative_path, write_atomically


@pytest.mark.parametrize("value", ["../../etc", "1.2/../3", "1.2.", "01.2", "", "1.2.3" + ".4" * 40,
                                   "1.2\\3", "abc"])
def test_invalid_uids_are_refused(value: str) -> None:
    with pytest.raises(InvalidUid, match="StudyInstanceUID"):
        checked_uid(value, "StudyInstanceUID")


def test_valid_uid_with_trailing_padding() -> None:
    assert checked_uid("1.2.840.10008\x00", "SOPInstanceUID") == "1.2.840.10008"


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    relative = relative_path("instances", "1.2", "1.2.3", "1.2.3.4")
    write_atomically(tmp_path, relative, b"first")
    write_atomically(tmp_path, relative, b"second")
    assert (tmp_path / relative).read_bytes() == b"second"
    assert [p.name for p in (tmp_path / relative).parent.iterdir()] == ["1.2.3.4.dcm"]
