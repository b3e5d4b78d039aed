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


# Header sets as GE, Siemens, Philips and Canon scanners write them (TR/TE/TI in ms; values
# from typical 1.5/3 T brain protocols). Each row: vendor, description, image type, scanning
# sequence, scan options, TR, TE, TI, the role expected.
VENDOR_TABLE: list[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...],
                         float | None, float | None, float | None, SeriesRole]] = [
    ("GE", "AX T2 FLAIR", ("ORIGINAL", "PRIMARY", "OTHER"), ("SE", "IR"),
     ("FAST_GEMS", "IR_GEMS", "FILTERED_GEMS"), 9000, 119.7, 2250, SeriesRole.T2_FLAIR),
    ("GE", "AX T1 FLAIR", ("ORIGINAL", "PRIMARY", "OTHER"), ("SE", "IR"),
     ("FAST_GEMS", "IR_GEMS"), 2200, 10.2, 750, SeriesRole.T1_FLAIR),
    ("GE", "Sag CUBE FLAIR", ("ORIGINAL", "PRIMARY", "OTHER"), ("SE", "IR"),
     ("FAST_GEMS", "EDR_GEMS", "IR_GEMS"), 6000, 132, 1852, SeriesRole.T2_FLAIR),
    ("GE", "Ax CUBE FLAIR REFORMAT", ("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"),
     ("SE", "IR"), ("FAST_GEMS", "IR_GEMS"), 6000, 132, 1852, SeriesRole.T2_FLAIR),
    ("GE", "3-Plane Loc", ("ORIGINAL", "PRIMARY", "OTHER"), ("GR",), ("FAST_GEMS",),
     5.4, 1.6, None, SeriesRole.IGNORED),
    ("GE", "AX DWI 1000b", ("ORIGINAL", "PRIMARY", "OTHER"), ("EP",), ("EPI_GEMS",),
     6000, 82, None, SeriesRole.IGNORED),
    ("GE", "Apparent Diffusion Coefficient (mm2/s)", ("DERIVED", "PRIMARY", "ADC"), ("EP",), (),
     6000, 82, None, SeriesRole.IGNORED),
    ("GE", "ASSET calibration", ("ORIGINAL", "PRIMARY", "OTHER"), ("GR",), (),
     150, 1.5, None, SeriesRole.IGNORED),
    ("Siemens", "t2_tirm_tra_dark-fluid", ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"),
     ("SE", "IR"), ("IR",), 9000, 81, 2500, SeriesRole.T2_FLAIR),
    ("Siemens", "t1_tirm_tra", ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"), ("SE", "IR"),
     ("IR",), 2000, 9.1, 860, SeriesRole.T1_FLAIR),
    ("Siemens", "t2_space_dark-fluid_sag_p2_iso", ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
     ("SE", "IR"), ("IR",), 5000, 387, 1800, SeriesRole.T2_FLAIR),
    ("Siemens", "t2_space_dark-fluid_sag_p2_iso_MPR_Tra", ("DERIVED", "PRIMARY", "MPR", "ND"),
     ("SE", "IR"), ("IR",), 5000, 387, 1800, SeriesRole.T2_FLAIR),
    ("Siemens", "t1_mprage_sag_p2_iso", ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), ("GR", "IR"),
     ("IR",), 2300, 2.98, 900, SeriesRole.IGNORED),
    ("Siemens", "t2_tse_tra_p2", ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"), ("SE",),
     ("SAT1",), 6000, 99, None, SeriesRole.IGNORED),
    ("Siemens", "ep2d_diff_3scan_trace_p2_TRACEW", ("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"),
     ("EP",), ("PFP", "FS"), 5300, 89, None, SeriesRole.IGNORED),
    ("Siemens", "ep2d_diff_3scan_trace_p2_ADC", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC"),
     ("EP",), ("PFP", "FS"), 5300, 89, None, SeriesRole.IGNORED),
    ("Siemens", "localizer", ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"), ("GR",), (),
     8.6, 4.0, None, SeriesRole.IGNORED),
    ("Siemens", "t2_tirm_tra_dark-fluid", ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"),
     ("SE", "IR"), ("IR",), 9000, 81, 150, SeriesRole.IGNORED),  # a STIR mislabelled as FLAIR
    ("Philips", "T2W_FLAIR", ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"), ("IR",), ("FS",),
     11000, 125, 2800, SeriesRole.T2_FLAIR),
    ("Philips", "T1W_FLAIR_TRA", ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"), ("IR",), (),
     2000, 15, 800, SeriesRole.T1_FLAIR),
    ("Philips", "3D_Brain_VIEW_FLAIR_SHC", ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"), ("SE", "IR"),
     (), 4800, 320, 1650, SeriesRole.T2_FLAIR),
    ("Philips", "SURVEY", ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"), ("GR",), (),
     11, 4.6, None, SeriesRole.IGNORED),
    ("Philips", "T1W_3D_TFE", ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"), ("GR",), (),
     8.1, 3.7, None, SeriesRole.IGNORED),
    ("Philips", "SENSE_REF", ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"), ("GR",), (),
     4, 0.9, None, SeriesRole.IGNORED),
    ("Canon", "FLAIR_AX", ("ORIGINAL", "PRIMARY"), ("IR",), (), 10000, 100, 2500,
     SeriesRole.T2_FLAIR),
    ("Canon", "T1_FLAIR_AX", ("ORIGINAL", "PRIMARY"), ("IR",), (), 2400, 12, 800,
     SeriesRole.T1_FLAIR),
    ("Canon", "T2_FSE_AX", ("ORIGINAL", "PRIMARY"), ("SE",), (), 4500, 105, None,
     SeriesRole.IGNORED),
    ("Canon", "DWI_AX_b1000", ("ORIGINAL", "PRIMARY"), ("EP",), (), 5000, 90, None,
     SeriesRole.IGNORED),
    # No TI/TE written (an anonymiser removed them, or an old export): the description decides.
    ("Canon", "FLAIR_AX", ("ORIGINAL", "PRIMARY"), ("IR",), (), None, None, None,
     SeriesRole.T2_FLAIR),
    ("GE", "AX T1 FLAIR", ("ORIGINAL", "PRIMARY", "OTHER"), ("SE", "IR"), (), None, None, None,
     SeriesRole.T1_FLAIR),
    # A secondary capture made of a FLAIR (screen shot, key image): derived, not a reformat.
    ("Siemens", "t2_tirm_tra_dark-fluid", ("DERIVED", "SECONDARY", "OTHER"), ("SE", "IR"),
     ("IR",), 9000, 81, 2500, SeriesRole.IGNORED),
]


@pytest.mark.parametrize(
    ("vendor", "description", "image_type", "scanning_sequence", "scan_options", "tr", "te", "ti",
     "role"),
    VENDOR_TABLE,
    ids=[f"{row[0]}:{row[1]}:{row[-1]}" for row in VENDOR_TABLE],
)
def test_vendor_header_sets(
    vendor: str, description: str, image_type: tuple[str, ...], scanning_sequence: tuple[str, ...],
    scan_options: tuple[str, ...], tr: float | None, te: float | None, ti: float | None,
    role: SeriesRole,
) -> None:
    decision = classify_series(series(
        series_description=description, image_type=image_type,
        scanning_sequence=scanning_sequence, scan_options=scan_options,
        repetition_time=tr, echo_time=te, inversion_time=ti,
    ))
    assert decision.role is role, decision.reason


def test_an_acquired_flair_beats_its_reformat_whatever_the_counts() -> None:
    decisions = assign_roles([
        series("1.1", instance_count=160, image_type=("DERIVED", "PRIMARY", "MPR", "ND"),
               series_description="t2_space_dark-fluid_sag_p2_iso_MPR_Tra"),
        series("1.2", instance_count=176, series_description="t2_space_dark-fluid_sag_p2_iso"),
    ])
    assert decisions["1.2"].role is SeriesRole.T2_FLAIR
    assert decisions["1.1"].role is SeriesRole.IGNORED


def test_rules_are_configurable() -> None:
    from node.config import load_settings
    from node.domain.series import RoleRules

    rules = RoleRules(t2_flair_min_inversion_time=3000.0, ignored_descriptions=(r"research",),
                      accept_reformats=False)
    assert classify_series(series(), rules).role is SeriesRole.IGNORED  # TI 2500 < 3000
    assert classify_series(series(inversion_time=3200.0, series_description="research FLAIR"),
                           rules).role is SeriesRole.IGNORED
    reformat = series(image_type=("DERIVED", "PRIMARY", "MPR"))
    assert classify_series(reformat).role is SeriesRole.T2_FLAIR
    assert classify_series(reformat, rules).role is SeriesRole.IGNORED

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lacuna.toml"
        path.write_text(
            "[series_roles]\n"
            "t2_flair_min_inversion_time = 3000\n"
            "t1_flair_inversion_time = [600, 1200]\n"
            "ignored_descriptions = ['research']\n"
            "t2_flair_descriptions = ['dark.?fluid', 'flair']\n"
            "accept_reformats = false\n"
        )
        settings = load_settings(path, {"LACUNA_SERIES_ROLES_T1_FLAIR_MAX_ECHO_TIME": "30"})
    loaded = settings.series_roles
    assert loaded.t2_flair_min_inversion_time == 3000.0
    assert loaded.t1_flair_inversion_time == (600.0, 1200.0)
    assert loaded.t1_flair_max_echo_time == 30.0
    assert loaded.ignored_descriptions == ("research",)
    assert loaded.t2_flair_descriptions == ("dark.?fluid", "flair")
    assert loaded.t1_flair_descriptions == RoleRules().t1_flair_descriptions
    assert loaded.accept_reformats is False
