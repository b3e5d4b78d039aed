"""Training end to end on a tiny plan: a package that verifies and registers. Slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.inference import TwoStageEngine
from models.package import verify_package
from training.train import TrainingPlan, package_plan, train_package, training_seeds


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["first", "varied+paper"])
def test_tiny_training_run_writes_a_verifiable_package(tmp_path: Path, recipe: str) -> None:
    extras = recipe != "first"
    plan = TrainingPlan(subjects=2, validation_subjects=1, primary_crops_per_epoch=32,
                        primary_epochs=1, secondary_epochs=1, base_filters=4, version="tiny",
                        varied=extras, rotate_lesion_crops=extras, secondary_from_primary=extras,
                        context_slices=3 if extras else 1)
    manifest = train_package(plan, tmp_path / "package")
    assert verify_package(tmp_path / "package") == manifest
    assert "dice" in manifest.metrics
    assert "synthetic" in manifest.trained_on
    assert ("varied scanners" in manifest.trained_on) == extras
    card = (tmp_path / "package" / "MODEL_CARD.md").read_text()
    assert "**Not for clinical use.**" in card and "| Dice of lesion area |" in card
    assert "95 % interval" in card and manifest.trained_on in card
    assert ("each slice with its 2 nearest neighbours" in card) == extras
    assert TwoStageEngine.load(tmp_path / "package").context_slices == plan.context_slices
    package = tmp_path / "package"
    assert [p.name for p in (package / "checkpoints").iterdir()] == sorted(
        ["primary-epoch-001.weights.h5", "secondary.weights.h5"])
    assert list((package / "logs" / "primary").rglob("events.out.tfevents.*"))  # TensorBoard


@pytest.mark.slow
def test_training_on_a_hospitals_labelled_studies(tmp_path: Path, synthetic_study) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_labelled_data import annotated_folder

    data = annotated_folder(synthetic_study, tmp_path / "annotated")
    plan = TrainingPlan(subjects=0, validation_subjects=1, primary_crops_per_epoch=32,
                        primary_epochs=1, secondary_epochs=1, base_filters=4, version="tiny",
                        data_dir=data)
    manifest = train_package(plan, tmp_path / "package")
    assert verify_package(tmp_path / "package") == manifest
    assert f"1 labelled studies (DICOM SEG ground truth) from {data}" in manifest.trained_on


@pytest.mark.slow
def test_ablation_rows_train_and_evaluate(tmp_path: Path) -> None:
    from PIL import Image

    from training.ablation import ROWS, run_ablation

    plan = TrainingPlan(subjects=2, validation_subjects=1, primary_crops_per_epoch=32,
                        primary_epochs=1, secondary_epochs=1, base_filters=4)
    chosen = (ROWS[0], ROWS[1], ROWS[-1])  # task a and b alone, and the proposed method
    results = run_ablation(plan, tmp_path / "ablation", rows=chosen)
    assert [row for row, _ in results] == list(chosen)
    for row, metrics in results:
        assert metrics["subjects"] == 1
        # Only a network that classifies can be scored on classes: task b alone cannot.
        if row.task == "b" and not row.two_stage:
            assert metrics["classification_precision"] is None
    table = (tmp_path / "ablation" / "ablation.md").read_text()
    assert "| Proposed method | b |" in table and "74.21 / 91.76 / 92.89" in table
    with Image.open(tmp_path / "ablation" / "ablation.png") as chart:
        assert chart.size[1] > 100


@pytest.mark.slow
def test_crossval_trains_every_fold_and_tests_every_subject_once(tmp_path: Path) -> None:
    from training.crossval import run_crossval

    # The first generator (every subject has lesions): with 3 subjects, a fold of the
    # realistic one can train on lesion-free subjects alone (15 % have none).
    plan = TrainingPlan(subjects=3, primary_crops_per_epoch=32, primary_epochs=2,
                        pretrain_epochs=1, secondary_epochs=1, base_filters=4,
                        oversample_per_lesion=True, realistic=False, grid_spacing_mm=None)
    result = run_crossval(plan, tmp_path / "cv", folds=3)
    assert [len(f.test) for f in result.folds] == [1, 1, 1]
    assert [m["subjects"] for m in result.per_fold] == [1, 1, 1]
    assert result.pooled["subjects"] == 3
    report = (tmp_path / "cv" / "crossval.md").read_text()
    assert "# 3-fold cross-validation by subject" in report and "| mean +- sd | 3 |" in report
    assert "1 of them lesion-rich pre-training" in report and "drawn per lesion" in report
    assert {p.name for p in (tmp_path / "cv").iterdir()} == {"crossval.md", "fold-1", "fold-2", "fold-3"}
    # Each fold's networks as a package, scored on that fold's test subject.
    packages = [tmp_path / "cv" / f"fold-{n}" / "package" for n in (1, 2, 3)]
    manifests = [verify_package(package) for package in packages]
    assert [m.version for m in manifests] == [f"{plan.version}+fold{n}" for n in (1, 2, 3)]
    assert "2 synthetic subjects (cross-validation fold 1 of 3" in manifests[0].trained_on
    assert manifests[0].metrics["dice"] == result.per_fold[0]["dice"]
    # A fold's recipe trains on its fold (a fine-tune or new classifiers from it too).
    assert [training_seeds(package_plan(m)) for m in manifests] == \
        [list(f.training) for f in result.folds]
    # ... which `lacuna ensemble` averages into one package that runs like any other.
    from training.ensemble import ensemble_package

    ensemble = ensemble_package(packages, tmp_path / "ensemble", "tiny-ensemble")
    assert verify_package(tmp_path / "ensemble") == ensemble
    assert TwoStageEngine.load(tmp_path / "ensemble").context_slices == 1


def test_classifiers_replace_a_packages_classifier_by_the_mean_of_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lacuna-train classifiers` keeps the primary network byte for byte and averages newly
    trained classifiers; the node runs the result as any package. Fast: two subjects of the
    first generator, one epoch per classifier."""
    import keras
    import numpy as np

    from models.networks import build_primary_network, build_secondary_network
    from models.package import PRIMARY_FILE, SECONDARY_FILE
    from training.classifiers import classifier_ensemble_package, classifiers_problem
    from training.cli import main
    from training.metrics import summarise
    from training.train import package_plan, write_package

    plan = TrainingPlan(subjects=2, secondary_epochs=1, base_filters=4, realistic=False,
                        grid_spacing_mm=None, version="tiny")
    source = write_package(tmp_path / "source", plan, build_primary_network(base_filters=4),
                           build_secondary_network(), trained_on="2 synthetic subjects",
                           metrics=summarise([]), intervals={}, seconds=0)
    assert package_plan(source) == plan

    manifest = classifier_ensemble_package(tmp_path / "source", tmp_path / "out", "tiny-2",
                                           members=2)
    assert verify_package(tmp_path / "out") == manifest
    assert manifest.files[PRIMARY_FILE] == source.files[PRIMARY_FILE]
    assert manifest.files[SECONDARY_FILE] != source.files[SECONDARY_FILE]
    assert manifest.laci_temperature == 1.0 and manifest.metrics == {}
    assert manifest.training["secondary"].startswith("mean of 2 CNNs")
    classifiers = manifest.training["classifiers"]
    assert classifiers["from_version"] == "tiny" and classifiers["from_files"] == source.files
    assert [m["seed"] for m in classifiers["members"]] == [1, 2]
    assert all(m["rois"] > 0 for m in classifiers["members"])
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "# Model card: lacuna-synthetic tiny-2" in card and "**Not for clinical use.**" in card

    # The engine's P(LACI) is the mean of the two members' outputs.
    engine = TwoStageEngine.load(tmp_path / "out")
    rois = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    secondary = keras.saving.load_model(tmp_path / "out" / SECONDARY_FILE, compile=False)
    members = [np.asarray(secondary.get_layer(f"member_{n}")(rois[..., None])).ravel()
               for n in (1, 2)]
    assert not np.allclose(members[0], members[1])
    np.testing.assert_allclose(engine.classify_rois(rois), np.mean(members, axis=0), rtol=1e-4)

    # Refused before anything is rendered, with the reason.
    assert classifiers_problem(source, tmp_path / "new", "tiny", 2) == \
        "the new package needs a new version, not tiny"
    assert classifiers_problem(source, tmp_path / "new", "tiny-3", 1) == \
        "an ensemble needs at least 2 classifiers, got 1"
    assert main(["classifiers", "--model", str(tmp_path / "source"), "--out",
                 str(tmp_path / "out"), "--version", "tiny-3"]) == 2
    assert "out" in capsys.readouterr().err


def test_finetune_trains_a_packages_primary_network_further_and_keeps_its_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lacuna-train finetune` starts from the source's U-Net weights, trains them with the
    loss asked for and copies the classifier byte for byte. Fast: two subjects of the first
    generator, one epoch of 32 crops."""
    from dataclasses import replace

    import keras
    import numpy as np

    from models.networks import build_primary_network, build_secondary_network
    from models.package import PRIMARY_FILE, SECONDARY_FILE
    from training.cli import main
    from training.finetune import finetune_package, finetune_problem
    from training.metrics import summarise
    from training.train import package_plan, write_package

    plan = TrainingPlan(subjects=2, primary_crops_per_epoch=32, base_filters=4, realistic=False,
                        grid_spacing_mm=None, version="tiny")
    start = build_primary_network(base_filters=4)
    source = write_package(tmp_path / "source", plan, start, build_secondary_network(),
                           trained_on="2 synthetic subjects", metrics=summarise([]),
                           intervals={}, seconds=0)

    manifest = finetune_package(tmp_path / "source", tmp_path / "out", "tiny-2", epochs=1,
                                learning_rate=1e-3, loss="crop-tversky+ce")
    assert verify_package(tmp_path / "out") == manifest
    assert manifest.files[SECONDARY_FILE] == source.files[SECONDARY_FILE]
    assert manifest.files[PRIMARY_FILE] != source.files[PRIMARY_FILE]
    # The recipe stays the source's; the run is its own record.
    assert package_plan(manifest) == replace(package_plan(source), version="tiny-2")
    tuned = manifest.training["finetune"]
    assert (tuned["from_version"], tuned["epochs"], tuned["loss"]) == ("tiny", 1, "crop-tversky+ce")
    assert "Tversky" in manifest.training["primary"] and manifest.metrics == {}
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "# Model card: lacuna-synthetic tiny-2" in card and "**Not for clinical use.**" in card

    # Trained from the source's weights: moved from them, same architecture.
    tuned_network = keras.saving.load_model(tmp_path / "out" / PRIMARY_FILE, compile=False)
    before, after = start.get_weights(), tuned_network.get_weights()
    assert [w.shape for w in before] == [w.shape for w in after]
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    assert TwoStageEngine.load(tmp_path / "out").settings == TwoStageEngine.load(
        tmp_path / "source").settings  # the source's operating point until calibrated

    # Refused before anything is rendered, with the reason.
    assert finetune_problem(source, tmp_path / "new", "tiny", 1, None, 1e-3) == \
        "the new package needs a new version, not tiny"
    assert finetune_problem(source, tmp_path / "new", "tiny-3", 0, None, 1e-3) == \
        "fine-tuning needs at least 1 epoch, got 0"
    unknown = finetune_problem(source, tmp_path / "new", "tiny-3", 1, "focal", 1e-3)
    assert unknown is not None and unknown.startswith("unknown loss 'focal'")
    assert finetune_problem(source, tmp_path / "new", "tiny-3", 1, None, 1e-3, 2) == \
        "context slices must be odd and at least the source network's 1, got 2"

    # Widened to three slices: the recipe records what the network now takes, so that a
    # later fine-tune feeds it three; the engine reads it from the network.
    wide = finetune_package(tmp_path / "source", tmp_path / "wide", "tiny-4", epochs=1,
                            learning_rate=1e-3, context_slices=3)
    assert package_plan(wide).context_slices == 3 and wide.training["finetune"]["context_slices"] == 3
    assert "widened to 3 adjacent slices" in wide.training["primary"]
    assert TwoStageEngine.load(tmp_path / "wide").context_slices == 3
    # A fine-tune of a fine-tune keeps the earlier one's record.
    assert manifest.training["earlier_finetunes"] == []
    again = finetune_package(tmp_path / "wide", tmp_path / "again", "tiny-5", epochs=1,
                             learning_rate=1e-3)
    assert again.training["earlier_finetunes"] == [wide.training["finetune"]]
    assert package_plan(again).context_slices == 3
    assert finetune_problem(wide, tmp_path / "new", "tiny-6", 1, None, 1e-3, 1) == \
        "context slices must be odd and at least the source network's 3, got 1"
    assert main(["finetune", "--model", str(tmp_path / "source"), "--out",
                 str(tmp_path / "out"), "--version", "tiny-3", "--epochs", "1"]) == 2
    assert "out" in capsys.readouterr().err


# Run in a process of its own: Keras picks its backend once per process, at import. TensorFlow
# is made unimportable there, as on a GPU machine that has JAX and no TensorFlow.
_TRAIN_ON_JAX = """
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
from pathlib import Path
import numpy as np
import keras
from training.train import TrainingPlan, train_package

assert keras.backend.backend() == "jax"
out = Path(sys.argv[1])
plan = TrainingPlan(subjects=2, validation_subjects=1, primary_crops_per_epoch=32,
                    primary_epochs=1, secondary_epochs=1, base_filters=4, version="tiny-jax")
train_package(plan, out / "package")
primary = keras.saving.load_model(out / "package" / "primary.keras", compile=False)
rng = np.random.default_rng(7)
slices = rng.normal(size=(2, 64, 64, 1)).astype("float32")
np.save(out / "slices.npy", slices)
np.save(out / "probability.npy", keras.ops.convert_to_numpy(primary(slices, training=False)))
"""


@pytest.mark.slow
def test_a_package_trained_on_the_jax_backend_without_tensorflow_runs_on_the_nodes_tensorflow(
        tmp_path: Path) -> None:
    """The GPU path: ``KERAS_BACKEND=jax lacuna-train train`` on a machine with JAX and no
    TensorFlow writes a package that the node's TensorFlow verifies, loads and computes as JAX
    did (to float32 rounding, amplified by BatchNorm: 1e-4 seen)."""
    import os
    import subprocess
    import sys

    import keras
    import numpy as np

    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", _TRAIN_ON_JAX, str(tmp_path)], env=environment,
                   check=True, timeout=900)

    package = tmp_path / "package"
    manifest = verify_package(package)
    assert manifest.training["framework"].endswith("jax backend on cpu")
    assert manifest.training["base_filters"] == 4
    assert (package / "logs" / "primary" / "epochs.csv").read_text().startswith("epoch,loss")
    assert TwoStageEngine.load(package).context_slices == 1  # as the node loads it
    assert keras.backend.backend() == "tensorflow"
    primary = keras.saving.load_model(package / "primary.keras", compile=False)
    slices = np.load(tmp_path / "slices.npy")
    on_tensorflow = keras.ops.convert_to_numpy(primary(slices, training=False))
    np.testing.assert_allclose(on_tensorflow, np.load(tmp_path / "probability.npy"), atol=1e-3)
