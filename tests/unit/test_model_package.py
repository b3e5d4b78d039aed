"""Packages made from other packages (finetune, classifiers, calibrate): what they keep and
what they must not."""

from __future__ import annotations

from pathlib import Path

from models.package import (
    CARD_NAME,
    PRIMARY_FILE,
    SECONDARY_FILE,
    ModelManifest,
    derived_package_problem,
    sha256_file,
    verify_package,
    write_derived_package,
)


def _source() -> ModelManifest:
    return ModelManifest(
        name="lacuna-synthetic", version="1.0.0",
        files={PRIMARY_FILE: "0" * 64, SECONDARY_FILE: "1" * 64}, input_matrix=(256, 256),
        lesion_threshold=0.7, laci_threshold=0.5, min_lesion_voxels=3,
        trained_on="80 synthetic subjects", laci_temperature=0.56,
        metrics={"dice": 44.0},
        training={"seed": 1, "primary": "U-Net", "calibration": {"lesion_threshold": 0.7}})


def test_a_derived_package_drops_the_sources_calibration_and_metrics_and_pins_its_files(
    tmp_path: Path,
) -> None:
    (tmp_path / PRIMARY_FILE).write_bytes(b"new primary network")
    (tmp_path / SECONDARY_FILE).write_bytes(b"kept secondary network")

    manifest = write_derived_package(
        _source(), tmp_path, "1.1.0", training={"primary": "U-Net, tuned", "finetune": {"epochs": 2}},
        card=lambda m: f"# Model card: {m.name} {m.version}\n", laci_temperature=1.0)

    assert verify_package(tmp_path) == manifest
    assert manifest.version == "1.1.0" and manifest.metrics == {}
    assert manifest.files == {name: sha256_file(tmp_path / name)
                              for name in (PRIMARY_FILE, SECONDARY_FILE)}
    # The calibration described the source's networks; the rest of the record stays, updated.
    assert manifest.training == {"seed": 1, "primary": "U-Net, tuned", "finetune": {"epochs": 2}}
    assert manifest.laci_temperature == 1.0 and manifest.lesion_threshold == 0.7
    assert (tmp_path / CARD_NAME).read_text() == "# Model card: lacuna-synthetic 1.1.0\n"


def test_a_derived_package_needs_its_own_version_and_an_empty_folder(tmp_path: Path) -> None:
    source = _source()
    assert derived_package_problem(source, tmp_path / "new", "1.0.0") == \
        "the new package needs a new version, not 1.0.0"
    assert derived_package_problem(source, tmp_path / "new", "1.1.0") is None
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert derived_package_problem(source, tmp_path / "full", "1.1.0") == \
        f"{tmp_path / 'full'} is not empty"
