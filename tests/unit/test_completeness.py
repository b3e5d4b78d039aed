from datetime import UTC, datetime, timedelta

import pytest

from node.domain.completeness import CompletenessRules, SeriesProgress, readiness
from node.domain.series import SeriesRole

T2, T1, IGNORED = SeriesRole.T2_FLAIR, SeriesRole.T1_FLAIR, SeriesRole.IGNORED
RULES = CompletenessRules(quiet_seconds=30, missing_wait_seconds=300, max_wait_seconds=1800)
FIRST = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def decide(series: list[SeriesProgress], last_after: float, now_after: float,
           urgent: bool = False) -> tuple[bool, str]:
    """Readiness with the last instance ``last_after`` s and now ``now_after`` s after the
    first instance."""
    result = readiness(series, FIRST, FIRST + timedelta(seconds=last_after),
                       FIRST + timedelta(seconds=now_after), RULES, urgent)
    return result.ready, result.reason


@pytest.mark.parametrize(
    ("series", "last", "now", "ready", "reason"),
    [
        # Early start: both FLAIR series announced their counts and are all here; a DWI
        # series still arriving does not hold them back.
        ([SeriesProgress(T2, 24, 24), SeriesProgress(T1, 24, 24), SeriesProgress(IGNORED, 3)],
         10, 10, True, "every announced instance"),
        # One short: wait for the quiet period, then for the missing ones.
        ([SeriesProgress(T2, 24, 24), SeriesProgress(T1, 20, 24)], 10, 20, False, "receiving"),
        ([SeriesProgress(T2, 24, 24), SeriesProgress(T1, 20, 24)], 10, 100, False, "short"),
        ([SeriesProgress(T2, 24, 24), SeriesProgress(T1, 20, 24)], 10, 310, True, "short"),
        # No counts announced: the quiet period decides.
        ([SeriesProgress(T2, 24), SeriesProgress(T1, 24)], 10, 39, False, "receiving"),
        ([SeriesProgress(T2, 24), SeriesProgress(T1, 24)], 10, 40, True, "quiet for 30 s"),
        # A T2 FLAIR without a T1 FLAIR: the T1 FLAIR may still come; wait, then go alone.
        ([SeriesProgress(T2, 24, 24)], 10, 200, False, "no T1 FLAIR yet"),
        ([SeriesProgress(T2, 24, 24)], 10, 310, True, "no T1 FLAIR yet after 300 s"),
        # Nothing to process: no reason to wait beyond the quiet period.
        ([SeriesProgress(IGNORED, 3)], 10, 40, True, "quiet"),
        # A stream that never falls quiet is processed after the maximum wait.
        ([SeriesProgress(T2, 24), SeriesProgress(T1, 24)], 1799, 1800, True, "maximum wait"),
    ],
)
def test_readiness(series: list[SeriesProgress], last: float, now: float, ready: bool,
                   reason: str) -> None:
    decided, why = decide(series, last, now)
    assert decided is ready
    assert reason in why


def test_urgent_studies_do_not_wait_for_a_missing_t1_flair() -> None:
    assert decide([SeriesProgress(T2, 24, 24)], 10, 40, urgent=True) == (True, "quiet for 30 s")
