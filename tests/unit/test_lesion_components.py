"""How a probability map becomes lesions (models.inference.lesion_components): the plain
threshold, and hysteresis (found at the lesion threshold, outlined at a lower one)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from models.inference import lesion_components
from models.package import ModelManifest, PackageError
from training.evaluate import OperatingPoint, outline_candidates


def _map() -> np.ndarray:
    """Two slices: a sure lesion core (0.9) in a halo at 0.4, a separate faint blob at 0.4
    that never reaches a lesion threshold, and a corner voxel of noise at 0.2."""
    probability = np.zeros((2, 12, 12), np.float32)
    probability[0, 2:7, 2:7] = 0.4
    probability[0, 4, 4] = 0.9
    probability[1, 3:6, 3:6] = 0.4  # the halo reaches the next slice too
    probability[0, 9:11, 9:11] = 0.4
    probability[1, 11, 0] = 0.2
    return probability


def test_the_plain_threshold_keeps_only_voxels_at_the_lesion_threshold() -> None:
    components = lesion_components(_map(), 0.7)
    assert int(components.max()) == 1 and int((components > 0).sum()) == 1
    # An outline threshold not below the lesion threshold changes nothing.
    np.testing.assert_array_equal(lesion_components(_map(), 0.7, 0.7), components)
    np.testing.assert_array_equal(lesion_components(_map(), 0.7, None), components)


def test_hysteresis_outlines_a_found_lesion_and_never_finds_a_new_one() -> None:
    components = lesion_components(_map(), 0.7, 0.3)
    lesion = components == components[0, 4, 4]
    # The whole connected halo at 0.3 or above, on both slices, is the one found lesion...
    assert int(lesion.sum()) == 25 + 9
    assert lesion[1, 4, 4] and lesion[0, 2, 2]
    # ...and the faint blob, connected to nothing that reaches 0.7, is not a lesion.
    assert not components[0, 9:11, 9:11].any() and not components[1, 11, 0]
    assert set(np.unique(components)) == {0, int(components[0, 4, 4])}


def test_hysteresis_keeps_every_found_lesion_apart_from_the_others() -> None:
    probability = np.zeros((1, 20, 20), np.float32)
    for centre in (4, 14):
        probability[0, centre - 2:centre + 3, centre - 2:centre + 3] = 0.5
        probability[0, centre, centre] = 0.95
    components = lesion_components(probability, 0.8, 0.4)
    assert len(set(np.unique(components)) - {0}) == 2
    assert int((components > 0).sum()) == 2 * 25


def _manifest(**changes: object) -> str:
    manifest = ModelManifest(name="m", version="1", files={"primary.keras": "a",
                                                           "secondary.keras": "b"},
                             input_matrix=(256, 256), lesion_threshold=0.7, laci_threshold=0.5,
                             min_lesion_voxels=3, trained_on="synthetic")
    return json.dumps({**asdict(manifest), **changes})


def test_a_manifest_outline_threshold_is_between_zero_and_the_lesion_threshold() -> None:
    assert ModelManifest.from_json(_manifest()).outline_threshold is None
    assert ModelManifest.from_json(_manifest(outline_threshold=0.3)).outline_threshold == 0.3
    for wrong in (0.0, 0.8, -0.1):
        with pytest.raises(PackageError, match="outline_threshold"):
            ModelManifest.from_json(_manifest(outline_threshold=wrong))


def test_a_manifest_names_its_mirror_axes_once_each_among_rows_and_columns() -> None:
    earlier = json.loads(_manifest())
    del earlier["mirror_axes"]  # manifests written before the field existed
    assert ModelManifest.from_json(json.dumps(earlier)).mirror_axes == ()
    manifest = ModelManifest.from_json(_manifest(mirror_axes=["columns"]))
    assert manifest.mirror_axes == ("columns",)
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    for wrong in (["slices"], ["rows", "rows"]):
        with pytest.raises(PackageError, match="mirror_axes"):
            ModelManifest.from_json(_manifest(mirror_axes=wrong))


def test_calibration_tries_outlines_only_below_each_lesion_threshold() -> None:
    assert outline_candidates(0.2) == [None]
    assert outline_candidates(0.5) == [None, 0.2, 0.3, 0.4]
    assert outline_candidates(0.8) == [None, 0.2, 0.3, 0.4, 0.5]
    assert OperatingPoint(0.7, 3).key == "0.70/3"
    assert OperatingPoint(0.7, 3, 0.3).key == "0.70>0.30/3"
