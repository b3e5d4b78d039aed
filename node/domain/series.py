"""Series roles: which series of a study is the T2 FLAIR and which the T1 FLAIR.

Decided from acquisition attributes first (inversion recovery, TI, TE); the series description
is a hint used only when the attributes are missing, and can exclude a series (localizers,
calibration scans). Times are in ms. The thresholds and patterns are :class:`RoleRules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
# Multi-frame instances are split into one slice per frame by their functional groups.
PROCESSABLE_SOP_CLASSES = frozenset(
    {MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE})

# Fluid-nulling inversion times: T2 FLAIR nulls CSF with a long TI (~1800-2800 ms); T1 FLAIR
# uses a short TI (~700-1200 ms) with a short TE. STIR's TI (~150-250 ms) is below both.
DEFAULT_T2_FLAIR_DESCRIPTIONS = (
    r"t2.*(flair|tirm|dark.?fluid)", r"(flair|dark.?fluid).*t2", r"^(ax|sag|cor)?[ _]*flair",
)
DEFAULT_T1_FLAIR_DESCRIPTIONS = (r"t1.*(flair|tirm)", r"flair.*t1")
DEFAULT_IGNORED_DESCRIPTIONS = (
    r"localizer|locator|scout|survey|3.?plane|calibration|asset|sense.?ref|b1.?map",
)


@dataclass(frozen=True)
class RoleRules:
    """The thresholds (ms) and description patterns (case-insensitive regular expressions)
    the classifier uses; all configurable in ``[series_roles]``."""

    t2_flair_min_inversion_time: float = 1500.0
    t2_flair_min_echo_time: float = 70.0
    t1_flair_inversion_time: tuple[float, float] = (500.0, 1500.0)  # [low, high)
    t1_flair_max_echo_time: float = 40.0
    t2_flair_descriptions: tuple[str, ...] = DEFAULT_T2_FLAIR_DESCRIPTIONS
    t1_flair_descriptions: tuple[str, ...] = DEFAULT_T1_FLAIR_DESCRIPTIONS
    # Series whose description matches are ignored whatever their attributes say.
    ignored_descriptions: tuple[str, ...] = DEFAULT_IGNORED_DESCRIPTIONS
    # Reformats (MPR) of a 3D FLAIR keep its role, but any original series of that role wins.
    accept_reformats: bool = True

    def matches(self, patterns: tuple[str, ...], description: str) -> str | None:
        """The first pattern that matches ``description``, or None."""
        return next((p for p in patterns if re.search(p, description, re.IGNORECASE)), None)


REFORMAT_IMAGE_TYPES = frozenset({"MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP"})


class SeriesRole(StrEnum):
    T2_FLAIR = "T2_FLAIR"
    T1_FLAIR = "T1_FLAIR"
    IGNORED = "IGNORED"


FLAIR_ROLES = frozenset({SeriesRole.T2_FLAIR, SeriesRole.T1_FLAIR})


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


def series_attributes_from_json(
    series_instance_uid: str, series_number: int | None, series_description: str,
    instance_count: int, attributes: dict[str, Any],
) -> SeriesAttributes:
    """The classifier's view of a series from the acquisition attributes intake stores (JSON,
    as ``node.services.intake.series_attributes`` reads them from a dataset)."""
    return SeriesAttributes(
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        series_description=series_description,
        instance_count=instance_count,
        modality=attributes.get("modality", ""),
        sop_class_uid=attributes.get("sop_class_uid", ""),
        image_type=tuple(attributes.get("image_type", ())),
        scanning_sequence=tuple(attributes.get("scanning_sequence", ())),
        scan_options=tuple(attributes.get("scan_options", ())),
        repetition_time=attributes.get("repetition_time"),
        echo_time=attributes.get("echo_time"),
        inversion_time=attributes.get("inversion_time"),
        derived_by_compression_only=bool(attributes.get("derived_by_compression_only", False)),
    )


@dataclass(frozen=True)
class RoleDecision:
    role: SeriesRole
    reason: str


def classify_series(series: SeriesAttributes, rules: RoleRules | None = None) -> RoleDecision:
    """Role of one series on its own, with the reason a person can read in the audit trail."""
    rules = rules or RoleRules()
    if series.modality != "MR":
        return RoleDecision(SeriesRole.IGNORED, f"modality {series.modality or 'missing'}")
    if series.sop_class_uid not in PROCESSABLE_SOP_CLASSES:
        return RoleDecision(SeriesRole.IGNORED, f"SOP class {series.sop_class_uid} not processed")
    description = series.series_description
    if pattern := rules.matches(rules.ignored_descriptions, description):
        return RoleDecision(SeriesRole.IGNORED, f"description {description!r} matches {pattern!r}")
    if series.image_type[:1] == ("DERIVED",) and not series.derived_by_compression_only:
        if not (rules.accept_reformats and is_reformat(series)):
            return RoleDecision(SeriesRole.IGNORED, "derived images")

    reformat = " (reformat)" if is_reformat(series) else ""
    inversion_recovery = "IR" in series.scanning_sequence or "IR" in series.scan_options
    gradient_echo = "GR" in series.scanning_sequence
    ti, te = series.inversion_time, series.echo_time
    if ti is not None and te is not None:
        if gradient_echo:  # MPRAGE, IR-prepared GRE: T1-weighted but not a FLAIR
            return RoleDecision(SeriesRole.IGNORED, f"inversion-prepared gradient echo, TI {ti:g}")
        if ti >= rules.t2_flair_min_inversion_time and te >= rules.t2_flair_min_echo_time:
            return RoleDecision(SeriesRole.T2_FLAIR,
                                f"inversion recovery, TI {ti:g}, TE {te:g}{reformat}")
        low, high = rules.t1_flair_inversion_time
        if low <= ti < high and te <= rules.t1_flair_max_echo_time:
            return RoleDecision(SeriesRole.T1_FLAIR,
                                f"inversion recovery, TI {ti:g}, TE {te:g}{reformat}")
        return RoleDecision(SeriesRole.IGNORED, f"TI {ti:g} and TE {te:g} match no FLAIR role")
    if (inversion_recovery or ti is None) and not gradient_echo:
        # Attributes do not decide; the description is the only hint left. T1 patterns are
        # the more specific ("FLAIR" alone means the T2 FLAIR), so they are tried first.
        if pattern := rules.matches(rules.t1_flair_descriptions, description):
            return RoleDecision(SeriesRole.T1_FLAIR,
                                f"description {description!r} matches {pattern!r} (no TI/TE)")
        if pattern := rules.matches(rules.t2_flair_descriptions, description):
            return RoleDecision(SeriesRole.T2_FLAIR,
                                f"description {description!r} matches {pattern!r} (no TI/TE)")
    return RoleDecision(SeriesRole.IGNORED, "not an inversion-recovery FLAIR series")


def is_reformat(series: SeriesAttributes) -> bool:
    return bool(REFORMAT_IMAGE_TYPES & set(series.image_type))


def assign_roles(
    series: list[SeriesAttributes], rules: RoleRules | None = None
) -> dict[str, RoleDecision]:
    """Roles for every series of a study: at most one T2 FLAIR and one T1 FLAIR. Among several
    candidates an acquired series beats a reformat, then the most instances win, then the
    lowest series number."""
    decisions = {s.series_instance_uid: classify_series(s, rules) for s in series}
    for role in (SeriesRole.T2_FLAIR, SeriesRole.T1_FLAIR):
        candidates = sorted(
            (s for s in series if decisions[s.series_instance_uid].role is role),
            key=lambda s: (is_reformat(s), -s.instance_count, s.series_number or 0,
                           s.series_instance_uid),
        )
        for loser in candidates[1:]:
            decisions[loser.series_instance_uid] = RoleDecision(
                SeriesRole.IGNORED,
                f"another {role} series ({candidates[0].series_instance_uid}) was chosen",
            )
    return decisions
