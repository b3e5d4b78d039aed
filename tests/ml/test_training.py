"""Training end to end on a tiny plan: a package that verifies and registers. Slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.package import verify_package
from training.train import TrainingPlan, train_package


@pytest.mark.slow
def test_tiny_training_run_writes_a_verifiable_package(tmp_path: Path) -> None:
    plan = TrainingPlan(subjects=2, validation_subjects=1, primary_crops_per_epoch=32,
                        primary_epochs=1, secondary_epochs=1, base_filters=4, version="tiny")
    manifest = train_package(plan, tmp_path / "package")
    assert verify_package(tmp_path / "package") == manifest
    assert set(manifest.metrics) >= {"dice", "detection_recall_any_overlap"}
    assert "synthetic" in manifest.trained_on
