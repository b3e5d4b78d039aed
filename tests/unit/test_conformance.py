"""docs/conformance.md agrees with the Application Entity the node builds: the transfer
syntaxes accepted, the storage SOP classes (count and the processed ones), Verification, and
the association limits it states."""

from __future__ import annotations

import re
from pathlib import Path

from pynetdicom.sop_class import (
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    Verification,
)

from node.config import ScpSettings
from node.dicom.scp import build_ae
from node.dicom.status import Status

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(title)
    end = text.find("\n### ", start + 1)
    return text[start:end if end != -1 else None]


def table_uids(text: str) -> set[str]:
    return set(re.findall(r"\|\s*(1\.2\.840\.10008[\d.]+)\s*\|", text))


def test_transfer_syntax_table_matches_the_ae() -> None:
    ae = build_ae(ScpSettings())
    offered = {ts for context in ae.supported_contexts for ts in context.transfer_syntax}
    assert table_uids(section("### 2.3 Transfer syntaxes accepted")) == offered


def test_sop_class_statements_match_the_ae() -> None:
    ae = build_ae(ScpSettings())
    supported = {context.abstract_syntax for context in ae.supported_contexts}
    storage = supported - {Verification}
    assert Verification in supported
    text = section("### 2.2 Storage SCP")
    assert f"{len(storage)} classes" in text
    assert table_uids(text) == {MRImageStorage, EnhancedMRImageStorage,
                                LegacyConvertedEnhancedMRImageStorage}
    assert table_uids(text) <= storage


def test_association_policies_and_statuses_match() -> None:
    ae = build_ae(ScpSettings())
    policies = section("### 2.1 Association policies")
    assert f"| {ae.maximum_associations} per process" in policies
    assert f"| {ae.maximum_pdu_size} bytes" in policies
    assert f"{ae.acse_timeout:g} s / {ae.dimse_timeout:g} s / {ae.network_timeout:g} s" in policies
    statuses = section("### 2.4 C-STORE status codes")
    for status in Status:
        if status not in (Status.SOP_CLASS_NOT_SUPPORTED,):
            assert f"| 0x{status:04X} |" in statuses, status.name


def test_association_limits_come_from_the_settings() -> None:
    ae = build_ae(ScpSettings(max_associations=3, max_pdu_size=0, acse_timeout=5,
                              dimse_timeout=6, network_timeout=7))
    assert (ae.maximum_associations, ae.maximum_pdu_size) == (3, 0)
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (5, 6, 7)


def test_the_accepted_sop_classes_can_be_narrowed() -> None:
    from node.config import load_settings

    settings = load_settings(None, {"LACUNA_SCP_ACCEPTED_SOP_CLASSES":
                                    "MRImageStorage, 1.2.840.10008.5.1.4.1.1.4.1"})
    ae = build_ae(settings.scp)
    supported = {context.abstract_syntax for context in ae.supported_contexts}
    assert supported == {MRImageStorage, EnhancedMRImageStorage, Verification}
    import pytest

    from node.errors import ConfigError

    with pytest.raises(ConfigError, match="scp.accepted_sop_classes: CTStorage is not"):
        load_settings(None, {"LACUNA_SCP_ACCEPTED_SOP_CLASSES": "CTStorage"})
