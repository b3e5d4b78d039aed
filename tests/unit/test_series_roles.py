import pytest

from node.domain.series import (
    MR_IMAGE_STORAGE,
    SeriesAttributes,
    SeriesRole,
    assign_roles,
    classify_series,
)


def series(uid: str = "1.1", **overrides: object) -> SeriesAttributes:
    values: dict[str, object] = dict(
        series_instance_uid=uid, modality="MR", sop_class_uid=MR_IMAGE_STORAGE,
        image_type=("ORIGINAL", "PRIMARY", "M"), scanning_sequence=("SE", "IR"),
        scan_options=("IR",), repetition_time=9000.0, echo_time=120.0, inversion_time=2500.0,
        series_description="AX T2 FLAIR", instance_count=24,
    )
    values.update(overrides)
    return SeriesAttributes(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "role"),
    [
        ({}, SeriesRole.T2_FLAIR),
        ({"series_description": "t2_tirm_tra_dark-fluid"}, SeriesRole.T2_FLAIR),
        # Attributes decide, whatever the description says.
        ({"series_description": "T1 something"}, SeriesRole.T2_FLAIR),
        ({"repetition_time": 2000.0, "echo_time": 9.0, "inversion_time": 860.0,
          "series_description": "AX T1 FLAIR"}, SeriesRole.T1_FLAIR),
        # STIR: inversion recovery with a short TI.
        ({"inversion_time": 160.0, "echo_time": 60.0}, SeriesRole.IGNORED),
        # T2 TSE: no inversion.
        ({"scanning_sequence": ("SE",), "scan_options": (), "inversion_time": None,
          "series_description": "AX T2 TSE"}, SeriesRole.IGNORED),
        # DWI / ADC.
        ({"scanning_sequence": ("EP",), "scan_options": (), "inversion_time": None,
          "series_description": "DWI b1000"}, SeriesRole.IGNORED),
        ({"image_type": ("DERIVED", "PRIMARY", "ADC")}, SeriesRole.IGNORED),
        # Lossy compressed after acquisition (DERIVED by compression only): still the FLAIR.
        ({"image_type": ("DERIVED", "PRIMARY", "M"), "derived_by_compression_only": True},
         SeriesRole.T2_FLAIR),
        ({"modality": "OT"}, SeriesRole.IGNORED),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7"}, SeriesRole.IGNORED),
        # No TI/TE recorded: the description is the only hint.
        ({"inversion_time": None, "echo_time": None, "series_description": "T2W_FLAIR"},
         SeriesRole.T2_FLAIR),
        ({"inversion_time": None, "echo_time": None, "series_description": "t1_tirm_tra"},
         SeriesRole.T1_FLAIR),
    ],
)
def test_classify_series(overrides: dict[str, object], role: SeriesRole) -> None:
    decision = classify_series(series(**overrides))
    assert decision.role is role
    assert decision.reason


def test_assign_roles_keeps_one_series_per_role_and_says_why() -> None:
    decisions = assign_roles([
        series("1.1", instance_count=24, series_number=4),
        series("1.2", instance_count=12, series_number=9),
        series("1.3", repetition_time=2000.0, echo_time=9.0, inversion_time=860.0),
        series("1.4", modality="SR"),
    ])
    assert decisions["1.1"].role is SeriesRole.T2_FLAIR
    assert decisions["1.2"].role is SeriesRole.IGNORED
    assert "1.1" in decisions["1.2"].reason
    assert decisions["1.3"].role is SeriesRole.T1_FLAIR
    assert decisions["1.4"].reason == "modality SR"


def test_only_a_lossy_compression_derivation_keeps_a_derived_series() -> None:
    from pydicom import Dataset

    from node.services.intake import derived_by_compression_only

    def dataset(*codes: tuple[str, str], lossy: str = "01") -> Dataset:
        ds = Dataset()
        ds.LossyImageCompression = lossy
        ds.DerivationCodeSequence = []
        for value, scheme in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = value, scheme
            ds.DerivationCodeSequence.append(item)
        return ds

    assert derived_by_compression_only(dataset(("113040", "DCM")))
    assert not derived_by_compression_only(dataset(("113040", "DCM"), lossy="00"))
    assert not derived_by_compression_only(dataset(("113040", "DCM"), ("113047", "DCM")))
    assert not derived_by_compression_only(dataset())
