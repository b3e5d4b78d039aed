"""Model packages: a folder with the two ``.keras`` files and ``manifest.json``.

The manifest names the package, pins every file by sha256 and carries what the node needs to
run it (input matrix, thresholds) and what a reader needs to trust it (training data, metrics,
intended use).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
CARD_NAME = "MODEL_CARD.md"  # the model card beside the manifest: for people, not checked
PRIMARY_FILE = "primary.keras"
SECONDARY_FILE = "secondary.keras"
# In-plane axes of a slice, as its pixel array has them: what test-time mirroring may mirror.
MIRROR_AXIS_NAMES = ("rows", "columns")
SYNTHETIC_DATA_WARNING = (
    "Trained on synthetic data only (MNI152-derived phantoms); not for clinical use."
)


class PackageError(ValueError):
    """A model package is missing, malformed or does not match its manifest."""


def measured_metrics(metrics: dict[str, float | None]) -> dict[str, float]:
    """``metrics`` as a manifest stores them: only the figures measured (None, e.g. a class's
    precision on subjects without that class, is left out)."""
    return {key: value for key, value in metrics.items() if value is not None}


@dataclass(frozen=True)
class ModelManifest:
    """What ``manifest.json`` holds. Thresholds are probabilities in [0, 1]."""

    name: str
    version: str
    files: dict[str, str]  # file name -> sha256 hex digest
    input_matrix: tuple[int, int]
    lesion_threshold: float
    laci_threshold: float
    min_lesion_voxels: int
    trained_on: str
    intended_use: str = SYNTHETIC_DATA_WARNING
    # Square pixels (mm) the primary network runs on, in input_matrix tiles; None: every slice
    # resized to input_matrix (packages before 0.6).
    grid_spacing_mm: float | None = None
    # The secondary network's logit is divided by this (temperature scaling; 1: as trained).
    laci_temperature: float = 1.0
    # Hysteresis: a lesion is found where the probability reaches lesion_threshold and
    # outlined where it reaches this lower one, connected to it; None: lesion_threshold.
    outline_threshold: float | None = None
    # Test-time mirroring: the primary network also runs on each slice mirrored along these
    # in-plane axes ("rows", "columns"; every combination) and the probabilities are averaged.
    # Costs one more primary pass per view; empty: the slice as it is, once.
    mirror_axes: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        try:
            raw = json.loads(text)
            matrix = raw.pop("input_matrix")
            mirror_axes = tuple(str(axis) for axis in raw.pop("mirror_axes", ()))
            manifest = cls(input_matrix=(int(matrix[0]), int(matrix[1])),
                           mirror_axes=mirror_axes, **raw)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise PackageError(f"{MANIFEST_NAME} is malformed: {error}") from error
        for required in (PRIMARY_FILE, SECONDARY_FILE):
            if required not in manifest.files:
                raise PackageError(f"{MANIFEST_NAME} does not list {required}")
        if any(size % 16 for size in manifest.input_matrix):
            raise PackageError(f"input_matrix {manifest.input_matrix} must be multiples of 16")
        if manifest.grid_spacing_mm is not None and not manifest.grid_spacing_mm > 0:
            raise PackageError(f"grid_spacing_mm must be positive, not {manifest.grid_spacing_mm}")
        if not manifest.laci_temperature > 0:
            raise PackageError(f"laci_temperature must be positive, not {manifest.laci_temperature}")
        if manifest.outline_threshold is not None and not (
                0 < manifest.outline_threshold <= manifest.lesion_threshold):
            raise PackageError(f"outline_threshold {manifest.outline_threshold} must be above 0 "
                               f"and at most lesion_threshold {manifest.lesion_threshold}")
        if set(manifest.mirror_axes) - set(MIRROR_AXIS_NAMES) or \
                len(set(manifest.mirror_axes)) != len(manifest.mirror_axes):
            raise PackageError(f"mirror_axes {list(manifest.mirror_axes)} must be distinct "
                               f"names among {list(MIRROR_AXIS_NAMES)}")
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(package_dir: Path) -> ModelManifest:
    path = package_dir / MANIFEST_NAME
    if not path.is_file():
        raise PackageError(f"no {MANIFEST_NAME} in {package_dir}")
    return ModelManifest.from_json(path.read_text())


def verify_package(package_dir: Path) -> ModelManifest:
    """Read the manifest and check every listed file's sha256; raise :class:`PackageError`."""
    manifest = read_manifest(package_dir)
    for name, expected in sorted(manifest.files.items()):
        path = package_dir / name
        if not path.is_file():
            raise PackageError(f"{name} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise PackageError(f"{name}: sha256 {actual} does not match manifest {expected}")
    return manifest


def output_folder_problem(out_dir: Path) -> str | None:
    """Why a new package cannot be written to ``out_dir`` (a file, or a folder with files in
    it), or None: nothing is ever written over."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir} is a file, not a folder"
    if out_dir.exists() and any(out_dir.iterdir()):
        return f"{out_dir} is not empty"
    return None


def derived_package_problem(source: ModelManifest, out_dir: Path, version: str) -> str | None:
    """Why a package made from ``source`` cannot be written to ``out_dir`` as ``version``, or
    None: a derived package has a version of its own and a folder of its own."""
    if version == source.version:
        return f"the new package needs a new version, not {version}"
    return output_folder_problem(out_dir)


def write_derived_package(source: ModelManifest, out_dir: Path, version: str,
                          training: dict[str, Any], card: Callable[[ModelManifest], str],
                          **fields: Any) -> ModelManifest:
    """Write the manifest and card of a package made from ``source`` whose network files are
    already in ``out_dir``, verify it and return its manifest: ``source``'s fields with
    ``version``, the files' sha256, no metrics (until calibrated), ``fields`` and ``training``
    added to the source's training record less its calibration (which described the source's
    networks, not these)."""
    kept = {key: value for key, value in source.training.items() if key != "calibration"}
    manifest = replace(
        source, version=version,
        files={name: sha256_file(out_dir / name) for name in (PRIMARY_FILE, SECONDARY_FILE)},
        metrics={}, training={**kept, **training}, **fields)
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json())
    (out_dir / CARD_NAME).write_text(card(manifest))
    verify_package(out_dir)
    return manifest


def default_package_dir() -> Path:
    """The package committed with the source: ``models/default``."""
    return Path(__file__).resolve().parent / "default"
