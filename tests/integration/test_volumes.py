"""Pairing and resampling of real synthetic DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.errors import NotProcessable
from node.services.volumes import load_study_volumes
from training.phantom import Contrast, axial_geometry, make_phantom, render_series
from training.synth import write_study


def test_shuffled_instance_numbers_and_unequal_t1_matrix(tmp_path: Path) -> None:
    t2_geometry = axial_geometry(matrix=256)
    # T1 FLAIR: a finer matrix and a slightly shifted stack, as another protocol would write.
    t1_geometry = axial_geometry(matrix=320, centre=(0.0, 18.0, 15.0))
    study = write_study(tmp_path, seed=7, t2_geometry=t2_geometry, t1_geometry=t1_geometry,
                        shuffle_instance_numbers=True)
    volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], study.series[Contrast.T1_FLAIR])

    # T2 slices come back in position order although InstanceNumbers were shuffled.
    positions = [float(ds.ImagePositionPatient[2]) for ds in volumes.t2_datasets]
    assert positions == sorted(positions)
    assert [int(ds.InstanceNumber) for ds in volumes.t2_datasets] != list(range(1, 25))
    assert volumes.t2.shape == (24, 256, 256)
    assert volumes.t1 is not None and volumes.t1.shape == volumes.t2.shape
    assert volumes.t1_available.all() and volumes.t1_missing_reason is None

    # The resampled T1 matches T1 FLAIR rendered directly on the T2 grid.
    phantom = make_phantom(7, t2_geometry)
    direct = render_series(phantom, t2_geometry, Contrast.T1_FLAIR, seed_offset=1).pixels
    brain = direct > 300
    correlation = np.corrcoef(volumes.t1[brain], direct[brain].astype(np.float32))[0, 1]
    assert correlation > 0.9


def test_t1_stack_tilted_against_t2_is_resampled_per_pixel(tmp_path: Path) -> None:
    # 2 degrees about the left-right axis moves the T1 slices 4 mm along the T2 normal at the
    # front and back of a 230 mm field of view: most of a 5 mm slice. Taking one T1 slice per
    # T2 slice puts the wrong anatomy at both ends (correlation 0.61 with the direct render).
    t2_geometry = axial_geometry()
    t1_geometry = axial_geometry(tilt_deg=2.0)
    study = write_study(tmp_path, seed=7, t2_geometry=t2_geometry, t1_geometry=t1_geometry)
    volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], study.series[Contrast.T1_FLAIR])
    assert volumes.t1 is not None

    direct = render_series(make_phantom(7, t2_geometry), t2_geometry, Contrast.T1_FLAIR,
                           seed_offset=1).pixels.astype(np.float32)
    brain = (direct > 300) & volumes.t1_available[:, None, None]
    assert np.corrcoef(volumes.t1[brain], direct[brain])[0, 1] > 0.9


def test_t1_stack_tilted_beyond_the_limit_is_not_paired_and_the_reason_says_so(
    tmp_path: Path,
) -> None:
    study = write_study(tmp_path, seed=7, t2_geometry=axial_geometry(),
                        t1_geometry=axial_geometry(tilt_deg=12.0))
    volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], study.series[Contrast.T1_FLAIR])
    assert volumes.t1 is None and not volumes.t1_available.any()
    assert volumes.t1_missing_reason == (
        "T1 FLAIR is tilted 12.0 degrees against T2 FLAIR (at most 10 are paired).")


def test_t2_only_study_has_no_t1_and_says_why(tmp_path: Path) -> None:
    study = write_study(tmp_path, seed=8, include_t1=False)
    volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], [])
    assert volumes.t1 is None
    assert not volumes.t1_available.any()
    assert volumes.t1_missing_reason == "the study has no T1 FLAIR series."


def test_slices_without_geometry_are_not_processable(tmp_path: Path) -> None:
    import pydicom

    study = write_study(tmp_path, seed=9, include_t1=False)
    broken = study.series[Contrast.T2_FLAIR][0]
    dataset = pydicom.dcmread(broken)
    del dataset.ImagePositionPatient
    dataset.save_as(broken)
    with pytest.raises(NotProcessable, match="ImagePositionPatient"):
        load_study_volumes(study.series[Contrast.T2_FLAIR], [])
