"""Series roles: which series of a study is the T2 FLAIR and which the T1 FLAIR.

Decided from acquisition attributes first (inversion recovery, TI, TE); the series description
is a hint used only when the attributes are missing. Times are in ms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
PROCESSABLE_SOP_CLASSES = frozenset({MR_IMAGE_STORAGE})

# Fluid-nulling inversion times: T2 FLAIR nulls CSF with a long TI (~1800-2800 ms); T1 FLAIR
# uses a short TI (~700-1200 ms) with a short TE. STIR's TI (~150-250 ms) is below both.
T2_FLAIR_MIN_TI_MS = 1500.0
T2_FLAIR_MIN_TE_MS = 70.0
T1_FLAIR_TI_MS = (500.0, 1500.0)
T1_FLAIR_MAX_TE_MS = 40.0

_T2_FLAIR_HINT = re.compile(r"t2.*(flair|tirm|dark.?fluid)|(flair|dark.?fluid).*t2", re.I)
_T1_FLAIR_HINT = re.compile(r"t1.*(flair|tirm)|flair.*t1", re.I)


class SeriesRole(StrEnum):
    T2_FLAIR = "T2_FLAIR"
    T1_FLAIR = "T1_FLAIR"
    IGNORED = "IGNORED"


@dataclass(frozen=True)
class SeriesAttributes:
    """What the classifier reads from a series' first instance."""

    series_instance_uid: str
    modality: str
    sop_class_uid: str
    series_number: int | None = None
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    scan_options: tuple[str, ...] = ()
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    instance_count: int = 0
    # DERIVED only because it was lossy compressed after acquisition (a PACS or router did it):
    # the pixels are still the acquisition's, so the series keeps its role.
    derived_by_compression_only: bool = False


@dataclass(frozen=True)
class RoleDecision:
    role: SeriesRole
    reason: str


def classify_series(series: SeriesAttributes) -> RoleDecision:
    """Role of one series on its own, with the reason a person can read in the audit trail."""
    if series.modality != "MR":
        return RoleDecision(SeriesRole.IGNORED, f"modality {series.modality or 'missing'}")
    if series.sop_class_uid not in PROCESSABLE_SOP_CLASSES:
        return RoleDecision(SeriesRole.IGNORED, f"SOP class {series.sop_class_uid} not processed")
    if series.image_type[:1] == ("DERIVED",) and not series.derived_by_compression_only:
        return RoleDecision(SeriesRole.IGNORED, "derived images")

    inversion_recovery = "IR" in series.scanning_sequence or "IR" in series.scan_options
    ti, te = series.inversion_time, series.echo_time
    if ti is not None and te is not None:
        if ti >= T2_FLAIR_MIN_TI_MS and te >= T2_FLAIR_MIN_TE_MS:
            return RoleDecision(SeriesRole.T2_FLAIR, f"inversion recovery, TI {ti:g}, TE {te:g}")
        if T1_FLAIR_TI_MS[0] <= ti < T1_FLAIR_TI_MS[1] and te <= T1_FLAIR_MAX_TE_MS:
            return RoleDecision(SeriesRole.T1_FLAIR, f"inversion recovery, TI {ti:g}, TE {te:g}")
        return RoleDecision(SeriesRole.IGNORED, f"TI {ti:g} and TE {te:g} match no FLAIR role")
    if inversion_recovery or ti is None:
        # Attributes do not decide; the description is the only hint left.
        description = series.series_description
        if _T2_FLAIR_HINT.search(description):
            return RoleDecision(SeriesRole.T2_FLAIR, f"description {description!r} (no TI/TE)")
        if _T1_FLAIR_HINT.search(description):
            return RoleDecision(SeriesRole.T1_FLAIR, f"description {description!r} (no TI/TE)")
    return RoleDecision(SeriesRole.IGNORED, "not an inversion-recovery FLAIR series")


def assign_roles(series: list[SeriesAttributes]) -> dict[str, RoleDecision]:
    """Roles for every series of a study: at most one T2 FLAIR and one T1 FLAIR. Among several
    candidates the one with the most instances wins, then the lowest series number."""
    decisions = {s.series_instance_uid: classify_series(s) for s in series}
    for role in (SeriesRole.T2_FLAIR, SeriesRole.T1_FLAIR):
        candidates = sorted(
            (s for s in series if decisions[s.series_instance_uid].role is role),
            key=lambda s: (-s.instance_count, s.series_number or 0, s.series_instance_uid),
        )
        for loser in candidates[1:]:
            decisions[loser.series_instance_uid] = RoleDecision(
                SeriesRole.IGNORED,
                f"another {role} series ({candidates[0].series_instance_uid}) was chosen",
            )
    return decisions
