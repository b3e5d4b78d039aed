"""``lacuna-train``: the research commands of the ML engineer (synthetic data, training,
ablation, cross-validation, calibration, ensembles, evaluation). They stay reachable as
``lacuna-train train`` etc. for one release, with a note on stderr.

Exit codes as ``lacuna``'s (:mod:`node.console`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.package import CARD_NAME, MIRROR_AXIS_NAMES
from node.config import Settings
from node.console import EXIT_OK, EXIT_USAGE, LacunaParser, run

if TYPE_CHECKING:  # training (and its scientific stack) loads only when a command needs it
    from training.train import TrainingPlan

# training.train.LOSSES's names, spelt here so that parsing a command loads no training code.
LOSS_CHOICES = ("dice+ce", "crop-dice+ce", "crop-tversky+ce", "crop-tversky85+ce", "ce")

COMMANDS = ("synth", "train", "ablation", "crossval", "calibrate", "ensemble", "classifiers",
            "finetune", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def build_parser() -> argparse.ArgumentParser:
    parser = LacunaParser(prog="lacuna-train", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def register(commands: Any, alias_of: str | None = None) -> None:
    """Add the research commands to ``commands``; with ``alias_of`` (a program name), as its
    deprecated aliases, each saying where it moved before it runs."""
    _register_data(commands)
    _register_training(commands)
    _register_packages(commands)
    if alias_of is not None:
        for name in COMMANDS:
            command = commands.choices[name]
            command.set_defaults(handler=_moved(command.get_default("handler"), name, alias_of))


def _moved(handler: Callable[[argparse.Namespace, Settings], int], name: str,
           program: str) -> Callable[[argparse.Namespace, Settings], int]:
    def alias(args: argparse.Namespace, settings: Settings) -> int:
        print(f"{program}: `{program} {name}` is now `lacuna-train {name}`; the alias goes in "
              "the next release", file=sys.stderr)
        return handler(args, settings)
    return alias


def _register_data(commands: Any) -> None:
    synth = commands.add_parser("synth", help="write synthetic FLAIR studies as DICOM")
    synth.add_argument("out", type=Path)
    synth.add_argument("--subjects", type=int, default=1)
    synth.add_argument("--seed", type=int, default=1)
    synth.set_defaults(handler=_synth)
    evaluate = commands.add_parser(
        "evaluate", help="metrics of a model package on held-out synthetic subjects")
    evaluate.add_argument("--model", type=Path, help="package folder (default: the bundled one)")
    evaluate.add_argument("--first-seed", type=int,
                          help="subjects FIRST.. (default: 700000 for the independent "
                               "generator, else 900000; training uses seed*10000+n)")
    evaluate.add_argument("--subjects", type=int, default=20)
    evaluate.add_argument("--generator", default="independent",
                          choices=("standard", "varied", "realistic", "independent"),
                          help="where the subjects come from (default: the independent test "
                               "generator, which no model is trained or calibrated on; even "
                               "seeds 256x256, odd 512x512)")
    evaluate.add_argument("--varied", action="store_true", help="the same as --generator varied")
    evaluate.add_argument("--out", type=Path, help="also write the markdown table here")
    evaluate.set_defaults(handler=_evaluate)


def _register_training(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train both networks on synthetic data (CPU; a GPU with KERAS_BACKEND=jax)")
    train.add_argument("--out", type=Path, required=True, help="folder for the model package")
    train.add_argument("--subjects", type=int, default=80)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--epochs", type=int,
                       help="primary network epochs (default: the training plan's)")
    train.add_argument("--version", help="the package's version (default: the training plan's)")
    train.add_argument("--base-filters", type=int,
                       help="the U-Net's filters at full resolution, doubled per level "
                            "(default 16; wider is for a GPU run)")
    train.add_argument("--crops", type=int,
                       help="primary network crops per epoch (default: the training plan's, 1600)")
    train.add_argument("--varied", action="store_true",
                       help="subjects of the richer generator, each on its own scanners")
    train.add_argument("--rotate", action="store_true", default=None,
                       help="rotate lesion-rich crops 5-10 degrees either way (the paper)")
    train.add_argument("--data", type=Path,
                       help="also train on your labelled studies: MR series + DICOM SEG under DIR")
    train.add_argument("--secondary-from-primary", action="store_true", default=None,
                       help="train the secondary network on the primary network's lesions (the paper)")
    _add_recipe_arguments(train)
    train.set_defaults(handler=_train)

    ablation = commands.add_parser(
        "ablation", help="the paper's Table 1 measured here: train and evaluate every variant")
    ablation.add_argument("--out", type=Path, required=True, help="folder for ablation.md/.png")
    ablation.add_argument("--subjects", type=int, default=40)
    ablation.add_argument("--validation", type=int, default=10, help="held-out subjects")
    ablation.add_argument("--epochs", type=int, default=5, help="primary network epochs")
    ablation.add_argument("--crops", type=int, default=1600, help="primary crops per epoch")
    ablation.add_argument("--secondary-epochs", type=int, default=12)
    ablation.add_argument("--varied", action="store_true")
    ablation.add_argument("--seed", type=int, default=1)
    _add_recipe_arguments(ablation)  # the base every row varies (loss, schedules, input slices)
    ablation.set_defaults(handler=_ablation)

    crossval = commands.add_parser(
        "crossval", help="k-fold cross-validation split by subject: train and test every fold")
    crossval.add_argument("--out", type=Path, required=True, help="folder for crossval.md")
    crossval.add_argument("--subjects", type=int, default=40)
    crossval.add_argument("--folds", type=int, default=5)
    crossval.add_argument("--epochs", type=int, default=5, help="primary network epochs")
    crossval.add_argument("--crops", type=int, default=1600, help="primary crops per epoch")
    crossval.add_argument("--secondary-epochs", type=int, default=12)
    _add_recipe_arguments(crossval)
    crossval.add_argument("--varied", action="store_true")
    crossval.add_argument("--seed", type=int, default=1)
    crossval.set_defaults(handler=_crossval)


def _register_packages(commands: Any) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="choose a package's lesion threshold and smallest lesion on "
                          "validation subjects; writes a new package version")
    calibrate.add_argument("--model", type=Path, help="package folder (default: the bundled one)")
    calibrate.add_argument("--out", type=Path, required=True, help="folder for the new package")
    calibrate.add_argument("--version", required=True, help="the new package's version")
    calibrate.add_argument("--first-seed", type=int, default=800_000,
                           help="validation subjects FIRST.. (keep apart from evaluate's 900000..)")
    calibrate.add_argument("--subjects", type=int, default=80,
                           help="validation subjects to sweep on (80: about 6 min on 2 cores; "
                                "with fewer, one lesion more or less decides)")
    calibrate.add_argument("--generator", choices=("standard", "varied", "realistic"),
                           help="validation subjects' generator (default: the one the package "
                                "was trained on; never the independent test generator)")
    calibrate.add_argument("--varied", action="store_true", help="the same as --generator varied")
    mirroring = calibrate.add_mutually_exclusive_group()
    mirroring.add_argument("--mirror", action="append", choices=MIRROR_AXIS_NAMES, metavar="AXIS",
                           help="test-time mirroring: also run the primary network on each "
                                "slice mirrored along AXIS (rows or columns; give both for all "
                                "four views) and average; swept and written with the operating "
                                "point (default: the package's own); each view costs one more "
                                "primary pass")
    mirroring.add_argument("--no-mirror", action="store_true",
                           help="calibrate without test-time mirroring, whatever the package had")
    calibrate.set_defaults(handler=_calibrate)

    ensemble = commands.add_parser(
        "ensemble", help="average several packages' networks (e.g. crossval's folds) into one "
                         "package; calibrate it next")
    ensemble.add_argument("--model", type=Path, action="append", required=True,
                          help="a member package folder; give it once per member (2 or more)")
    ensemble.add_argument("--out", type=Path, required=True, help="folder for the new package")
    ensemble.add_argument("--version", required=True, help="the new package's version")
    ensemble.set_defaults(handler=_ensemble)

    classifiers = commands.add_parser(
        "classifiers", help="retrain a package's classifier as the mean of several (its "
                            "primary network kept); calibrate it next")
    classifiers.add_argument("--model", type=Path, help="package folder (default: the bundled one)")
    classifiers.add_argument("--out", type=Path, required=True, help="folder for the new package")
    classifiers.add_argument("--version", required=True, help="the new package's version")
    classifiers.add_argument("--members", type=int, default=5,
                             help="classifiers to train and average (each about 1 min here on "
                                  "the bundled recipe's 80 subjects, after about 10 min rendering them)")
    classifiers.set_defaults(handler=_classifiers)

    finetune = commands.add_parser(
        "finetune", help="train a package's primary network further (its classifier kept)")
    finetune.add_argument("--model", type=Path, help="package folder (default: the bundled one)")
    finetune.add_argument("--out", type=Path, required=True, help="folder for the new package")
    finetune.add_argument("--version", required=True, help="the new package's version")
    finetune.add_argument("--epochs", type=int, required=True, help="more primary epochs")
    finetune.add_argument("--learning-rate", type=float, default=3e-4,
                          help="starting learning rate (cosine to 5 %% of it when the source's "
                               "recipe decays)")
    finetune.add_argument("--loss", choices=LOSS_CHOICES,
                          help="the primary network's loss (default: the source's)")
    finetune.add_argument("--seed", type=int, default=1, help="draws this run's crops")
    finetune.add_argument("--context-slices", type=int, choices=[1, 3, 5],
                          help="adjacent T2 FLAIR slices the network takes (default: the "
                               "source's; more widens its input, the new channels starting at 0)")
    finetune.set_defaults(handler=_finetune)


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``--recipe`` and the flags that override it (read back by :func:`_recipe_flags`); each
    flag defaults to None, "not given", so the recipe's own setting stands."""
    parser.add_argument("--recipe", choices=["lacuna", "paper"], default="lacuna",
                        help="lacuna: the shipped model's; paper: Liu et al.'s (flags below add to it)")
    parser.add_argument("--pretrain-epochs", type=int,
                        help="the paper's schedule: N epochs on lesion-rich crops, then all slices")
    parser.add_argument("--per-lesion", action="store_true", default=None,
                        help="draw lesion-rich crops per lesion, not per lesion voxel")
    parser.add_argument("--cosine-decay", action=argparse.BooleanOptionalAction,
                        help="primary network's learning rate falls along a cosine to 5 %% of it "
                             "(lacuna recipe: on; paper: off)")
    parser.add_argument("--loss", choices=LOSS_CHOICES,
                        help="primary network's loss: cross-entropy plus soft Dice of each crop "
                             "(lacuna) or over each batch (before 0.4.0), plus each crop's "
                             "Tversky index (misses weighted 0.7 or 0.85, false voxels the rest), or "
                             "cross-entropy alone (paper)")
    parser.add_argument("--context-slices", type=int, choices=[1, 3, 5],
                        help="T2 FLAIR slices the primary network sees at once: the slice and "
                             "its neighbours (both recipes: 1; docs/recipes.md measures 3)")
    parser.add_argument("--min-training-cnr", type=float,
                        help="realistic training subjects leave out lesions whose peak T2 FLAIR "
                             "contrast-to-noise is under this (validation and test untouched)")



def _bundled_package(settings: Settings) -> Path:
    """The bundled package's folder. The registry (SQLAlchemy, DICOM) is imported here, not at
    the top: ``lacuna-train train`` runs on a GPU machine that holds only what training needs."""
    from node.services import registry

    return registry.bundled_package(settings.models)


def _synth(args: argparse.Namespace, settings: Settings) -> int:
    from training.synth import write_studies

    for study in write_studies(args.out, args.subjects, args.seed):
        print(f"{study.folder}: {len(study.ground_truth)} lesion(s), "
              f"{sum(len(p) for p in study.series.values())} instances")
    return EXIT_OK



def _train_plan(args: argparse.Namespace) -> TrainingPlan:
    """``lacuna-train train``'s plan: ``--recipe``, then the flags given (``--version`` included:
    without it, the plan's own default)."""
    from training.train import recipe_plan

    given = {key: value for key, value in (
        ("version", args.version), ("primary_epochs", args.epochs),
        ("base_filters", args.base_filters), ("primary_crops_per_epoch", args.crops))
        if value is not None}
    return recipe_plan(
        args.recipe, subjects=args.subjects, seed=args.seed,
        varied=args.varied, data_dir=args.data, progress=sys.stderr.isatty(),
        **given, **_recipe_flags(args))



def _train(args: argparse.Namespace, settings: Settings) -> int:
    from training.train import train_package

    manifest = train_package(_train_plan(args), args.out)
    print(f"wrote {manifest.name} {manifest.version} to {args.out}: {manifest.metrics}")
    return EXIT_OK



def _ablation_plan(args: argparse.Namespace) -> TrainingPlan:
    """The plan every ablation row varies: ``--recipe`` and its flags, with the paper's
    rotation of lesion-rich crops (the rows' augmentation)."""
    from training.train import recipe_plan

    return recipe_plan(args.recipe, **{
        **_recipe_flags(args), "subjects": args.subjects, "validation_subjects": args.validation,
        "seed": args.seed, "primary_epochs": args.epochs, "primary_crops_per_epoch": args.crops,
        "secondary_epochs": args.secondary_epochs, "varied": args.varied,
        "rotate_lesion_crops": True})



def _ablation(args: argparse.Namespace, settings: Settings) -> int:
    from training.ablation import run_ablation

    run_ablation(_ablation_plan(args), args.out)
    print((args.out / "ablation.md").read_text())
    print(f"chart: {args.out / 'ablation.png'}")
    return EXIT_OK



# Recipe flags: argparse destination -> TrainingPlan field.
_RECIPE_FLAGS = {"rotate": "rotate_lesion_crops", "secondary_from_primary": "secondary_from_primary",
                 "pretrain_epochs": "pretrain_epochs", "per_lesion": "oversample_per_lesion",
                 "cosine_decay": "cosine_decay", "context_slices": "context_slices", "loss": "loss",
                 "min_training_cnr": "min_training_cnr"}



def _recipe_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The training flags given on the command line (None: not given, or not a flag of this
    command); they override ``--recipe``'s settings."""
    given = {field: getattr(args, name, None) for name, field in _RECIPE_FLAGS.items()}
    return {field: value for field, value in given.items() if value is not None}



def _crossval(args: argparse.Namespace, settings: Settings) -> int:
    from training.crossval import run_crossval
    from training.train import recipe_plan

    plan = recipe_plan(args.recipe, subjects=args.subjects, seed=args.seed,
                       primary_epochs=args.epochs, primary_crops_per_epoch=args.crops,
                       secondary_epochs=args.secondary_epochs, varied=args.varied,
                       **_recipe_flags(args))
    run_crossval(plan, args.out, folds=args.folds)
    print((args.out / "crossval.md").read_text())
    return EXIT_OK



def _subject_progress(args: argparse.Namespace, verb: str) -> Callable[[int, int], None]:
    """A progress line on stderr ("VERB done/total subjects"), silent with ``--json``."""
    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"\r{verb} {done}/{total} subjects", end="", file=sys.stderr, flush=True)
    return progress



def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from models.inference import TwoStageEngine
    from models.package import read_manifest
    from training.calibrate import calibrated_package, calibration_problem
    from training.evaluate import OperatingPoint

    package = args.model or _bundled_package(settings)
    seeds = list(range(args.first_seed, args.first_seed + args.subjects))
    problem = calibration_problem(read_manifest(package), args.out, args.version)
    if problem is not None:  # before minutes of loading and sweeping
        print(f"lacuna: {problem}", file=sys.stderr)
        return EXIT_USAGE

    progress = _subject_progress(args, "predicted")
    generator = "varied" if args.varied else args.generator or _trained_generator(package)
    mirror_axes = () if args.no_mirror else tuple(dict.fromkeys(args.mirror)) if args.mirror \
        else None
    manifest = calibrated_package(TwoStageEngine.load(package), package, args.out, args.version,
                                  seeds, generator=generator, progress=progress,
                                  mirror_axes=mirror_axes)
    if not args.json:
        print(file=sys.stderr)
    calibration = manifest.training["calibration"]
    if args.json:
        print(json.dumps({"model": f"{manifest.name} {manifest.version}", **calibration}, indent=2))
    else:
        print((args.out / CARD_NAME).read_text().split("## Calibration", 1)[1].strip())
        print(f"wrote {manifest.name} {manifest.version} to {args.out}: "
              f"{OperatingPoint.of(manifest).description}")
    return EXIT_OK



def _ensemble(args: argparse.Namespace, settings: Settings) -> int:
    from models.package import read_manifest
    from training.ensemble import ensemble_package, ensemble_problem

    problem = ensemble_problem([read_manifest(member) for member in args.model], args.out,
                               args.version)
    if problem is not None:  # before any network is loaded
        print(f"lacuna: {problem}", file=sys.stderr)
        return EXIT_USAGE
    manifest = ensemble_package(args.model, args.out, args.version)
    members = [m["version"] for m in manifest.training["ensemble"]["members"]]
    if args.json:
        print(json.dumps({"model": f"{manifest.name} {manifest.version}", "members": members,
                          "files": manifest.files}, indent=2))
    else:
        print(f"wrote {manifest.name} {manifest.version} to {args.out}: the mean of "
              f"{', '.join(members)}; its operating point is {members[0]}'s until "
              "`lacuna-train calibrate` chooses one")
    return EXIT_OK



def _classifiers(args: argparse.Namespace, settings: Settings) -> int:
    from models.package import read_manifest
    from training.classifiers import classifier_ensemble_package, classifiers_problem

    package = args.model or _bundled_package(settings)
    problem = classifiers_problem(read_manifest(package), args.out, args.version, args.members)
    if problem is not None:  # before minutes of rendering
        print(f"lacuna: {problem}", file=sys.stderr)
        return EXIT_USAGE
    manifest = classifier_ensemble_package(package, args.out, args.version, args.members)
    classifiers = manifest.training["classifiers"]
    if args.json:
        print(json.dumps({"model": f"{manifest.name} {manifest.version}", **classifiers},
                         indent=2))
    else:
        print(f"wrote {manifest.name} {manifest.version} to {args.out}: "
              f"{classifiers['from_version']}'s primary network and the mean of "
              f"{len(classifiers['members'])} classifiers ({classifiers['seconds']} s); "
              "`lacuna-train calibrate` fits its temperature next")
    return EXIT_OK


def _finetune(args: argparse.Namespace, settings: Settings) -> int:
    from models.package import read_manifest
    from training.finetune import finetune_package, finetune_problem

    package = args.model or _bundled_package(settings)
    problem = finetune_problem(read_manifest(package), args.out, args.version, args.epochs,
                               args.loss, args.learning_rate, args.context_slices)
    if problem is not None:  # before minutes of rendering
        print(f"lacuna: {problem}", file=sys.stderr)
        return EXIT_USAGE
    manifest = finetune_package(package, args.out, args.version, epochs=args.epochs,
                                learning_rate=args.learning_rate, loss=args.loss, seed=args.seed,
                                context_slices=args.context_slices)
    tuned = manifest.training["finetune"]
    if args.json:
        print(json.dumps({"model": f"{manifest.name} {manifest.version}", **tuned}, indent=2))
    else:
        print(f"wrote {manifest.name} {manifest.version} to {args.out}: "
              f"{tuned['from_version']}'s primary network after {tuned['epochs']} more epochs "
              f"({tuned['loss']}, {tuned['seconds']} s), its classifier unchanged; "
              "`lacuna-train calibrate` chooses its operating point next")
    return EXIT_OK


def _trained_generator(package: Path) -> str:
    """The generator a package's networks were trained on, from its manifest."""
    from models.package import read_manifest

    training = read_manifest(package).training
    if training.get("varied"):
        return "varied"
    return "realistic" if training.get("realistic") else "standard"



# What `lacuna-train evaluate` says each generator is.
_GENERATOR_NAMES = {
    "standard": "the first generator (one geometry)",
    "varied": "the richer generator on varied scanners",
    "realistic": "the realistic training generator (a training-distribution figure)",
    "independent": "the independent test generator (no model is trained or calibrated on it)",
}



def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from models.inference import TwoStageEngine
    from models.package import verify_package
    from training.evaluate import (
        evaluate_subjects,
    )
    from training.metrics import (
        SubjectCounts,
    )

    package = args.model or _bundled_package(settings)
    manifest = verify_package(package)
    engine = TwoStageEngine.load(package)
    generator = "varied" if args.varied else args.generator
    first = args.first_seed if args.first_seed is not None else (
        700_000 if generator == "independent" else 900_000)
    seeds = list(range(first, first + args.subjects))

    progress = _subject_progress(args, "evaluated")
    earlier: list[SubjectCounts] = []
    counts = evaluate_subjects(engine, seeds, progress, generator=generator, earlier_truth=earlier)
    if not args.json:
        print(file=sys.stderr)
    table = _evaluation_report(args, f"{manifest.name} {manifest.version}", generator, seeds,
                               counts, earlier)
    if args.out:
        args.out.write_text(table)
    return EXIT_OK


def _evaluation_report(args: argparse.Namespace, model: str, generator: str, seeds: list[int],
                       counts: list[Any], earlier: list[Any]) -> str:
    """Print ``lacuna-train evaluate``'s figures (JSON with ``--json``); the markdown table."""
    from training.evaluate import (
        breakdown_markdown,
        froc_markdown,
        outline_markdown,
        reliability_markdown,
        report_markdown,
        size_markdown,
    )
    from training.metrics import (
        bootstrap_intervals,
        breakdown,
        froc,
        outlines,
        recall_by_size,
        reliability,
        summarise,
    )

    metrics, intervals = summarise(counts), bootstrap_intervals(counts)
    by_size = recall_by_size(counts)
    if args.json:
        calibration = reliability(counts)
        print(json.dumps({"model": model, "generator": generator,
                          "seeds": [seeds[0], seeds[-1]],
                          "metrics": metrics, "intervals": intervals,
                          "recall_by_size": [vars(b) for b in by_size],
                          "froc": froc(counts),
                          "breakdown": {k: [vars(r) for r in rows]
                                        for k, rows in breakdown(counts).items()},
                          "outlines": [{"what": what, "lesions": lesions, "voxels": voxels}
                                       for what, lesions, voxels in outlines(counts)],
                          "expected_calibration_error": calibration.expected_calibration_error,
                          "earlier_truth_metrics": summarise(earlier) if earlier else None},
                         indent=2))
    table = report_markdown(metrics, intervals, f"{model}, {_GENERATOR_NAMES[generator]}, "
                                               f"seeds {seeds[0]}-{seeds[-1]}")
    if earlier:
        table += "\n" + report_markdown(
            summarise(earlier), bootstrap_intervals(earlier),
            "The same predictions on the earlier truth rule (2 of 5 samples inside), for "
            "comparison only")
    table += "\nFROC:\n\n" + froc_markdown(counts)
    table += "\nWhere it fails:\n\n" + breakdown_markdown(counts)
    table += "\nHow found lesions are outlined:\n\n" + outline_markdown(counts)
    table += "\nClassifier certainty (as reported in the SR):\n\n" + reliability_markdown(counts)
    table += "\nDetection recall by true lesion volume:\n\n" + size_markdown(by_size)
    if not args.json:
        print(table)
    return table
