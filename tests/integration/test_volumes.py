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
