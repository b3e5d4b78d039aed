"""``lacuna``: the admin CLI. It wires things together and holds no logic.

Exit codes: 0 success, 1 failure, 2 usage error, 3 bad configuration, 4 not found or refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from models.package import CARD_NAME, PackageError
from node.config import Settings, load_settings
from node.errors import ConfigError, JobError, LacunaError, ModelError
from node.logs import configure_logging

if TYPE_CHECKING:  # training (and its scientific stack) loads only when a command needs it
    from training.train import TrainingPlan

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG, EXIT_REFUSED = 0, 1, 2, 3, 4
logger = logging.getLogger("lacuna")


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
    parser.add_argument("--loss", choices=["dice+ce", "crop-dice+ce", "ce"],
                        help="primary network's loss: cross-entropy plus soft Dice of each crop "
                             "(lacuna) or over each batch (before 0.4.0), or cross-entropy "
                             "alone (paper)")
    parser.add_argument("--context-slices", type=int, choices=[1, 3, 5],
                        help="T2 FLAIR slices the primary network sees at once: the slice and "
                             "its neighbours (both recipes: 1; docs/recipes.md measures 3)")


class LacunaParser(argparse.ArgumentParser):
    """A parser that takes the global options (``--config``, ``--json``) wherever they are
    typed: before the command or after any subcommand (``lacuna serve --config FILE``).
    Subparsers are made of this class too; an option not typed at one level leaves the
    value of another level alone (SUPPRESS), and :func:`parse_arguments` fills defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                          help="TOML settings (default: LACUNA_CONFIG)")
        self.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="machine-readable output")


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = LacunaParser(prog="lacuna", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the embedded node: SCP, scheduler and worker")
    commands.add_parser("scp", help="only receive and store (never loads a model)")
    commands.add_parser("worker", help="only schedule and run jobs (no DICOM listener)")

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="action",
                                                                           required=True)
    db.add_parser("upgrade", help="migrate to the newest schema")
    downgrade = db.add_parser("downgrade", help="migrate down to REVISION ('base' drops all)")
    downgrade.add_argument("revision")
    db.add_parser("current", help="print the schema revision")

    synth = commands.add_parser("synth", help="write synthetic FLAIR studies as DICOM")
    synth.add_argument("out", type=Path)
    synth.add_argument("--subjects", type=int, default=1)
    synth.add_argument("--seed", type=int, default=1)

    train = commands.add_parser("train", help="train both networks on synthetic data (CPU)")
    train.add_argument("--out", type=Path, required=True, help="folder for the model package")
    train.add_argument("--subjects", type=int, default=80)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--epochs", type=int,
                       help="primary network epochs (default: the training plan's)")
    train.add_argument("--version", help="the package's version (default: the training plan's)")
    train.add_argument("--varied", action="store_true",
                       help="subjects of the richer generator, each on its own scanners")
    train.add_argument("--rotate", action="store_true", default=None,
                       help="rotate lesion-rich crops 5-10 degrees either way (the paper)")
    train.add_argument("--data", type=Path,
                       help="also train on your labelled studies: MR series + DICOM SEG under DIR")
    train.add_argument("--secondary-from-primary", action="store_true", default=None,
                       help="train the secondary network on the primary network's lesions (the paper)")
    _add_recipe_arguments(train)

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

    ensemble = commands.add_parser(
        "ensemble", help="average several packages' networks (e.g. crossval's folds) into one "
                         "package; calibrate it next")
    ensemble.add_argument("--model", type=Path, action="append", required=True,
                          help="a member package folder; give it once per member (2 or more)")
    ensemble.add_argument("--out", type=Path, required=True, help="folder for the new package")
    ensemble.add_argument("--version", required=True, help="the new package's version")

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

    demo = commands.add_parser("demo", help="round trip: synthetic study in, SEG + SR out")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--seed", type=int, default=2026)

    models = commands.add_parser("models", help="model versions").add_subparsers(
        dest="action", required=True)
    models.add_parser("list", help="registered versions; * active, ~ shadow; the bundled "
                                   "synthetic-trained model is marked")
    show_model = models.add_parser("show", help="one version: manifest, files, jobs run")
    show_model.add_argument("name")
    show_model.add_argument("version")
    register = models.add_parser(
        "register", help="verify a package's files, load it, smoke-test it, record it")
    register.add_argument("package", type=Path)
    activate = models.add_parser("activate", help="make NAME VERSION the active model")
    activate.add_argument("name")
    activate.add_argument("version")
    models.add_parser("rollback", help="re-activate the previously active version")
    models.add_parser("verify", help="re-check the files of every registered version")
    shadow = models.add_parser(
        "shadow", help="run NAME VERSION beside the active one (never exported); --stop ends it")
    shadow.add_argument("name", nargs="?")
    shadow.add_argument("version", nargs="?")
    shadow.add_argument("--stop", action="store_true")
    compare = models.add_parser(
        "compare", help="agreement of a shadow version with the clinical results")
    compare.add_argument("name", nargs="?", help="default: the current shadow version")
    compare.add_argument("version", nargs="?")

    jobs = commands.add_parser("jobs", help="processing jobs").add_subparsers(
        dest="action", required=True)
    jobs_list = jobs.add_parser("list")
    jobs_list.add_argument("--limit", type=int, default=50)
    show = jobs.add_parser("show")
    show.add_argument("job_id", type=int)
    retry = jobs.add_parser("retry", help="queue a failed or cancelled job again")
    retry.add_argument("job_id", type=int)
    cancel = jobs.add_parser("cancel", help="cancel a queued or failed job")
    cancel.add_argument("job_id", type=int)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True)
    for name, help_text in (("list", "the newest events, oldest first"),
                            ("export", "events as JSON lines (all by default)")):
        selection = audit.add_parser(name, help=help_text)
        selection.add_argument("--study", help="StudyInstanceUID")
        selection.add_argument("--ae", help="calling AE title")
        selection.add_argument("--action", dest="event_action", help="e.g. job.finished")
        selection.add_argument("--job", type=int)
        selection.add_argument("--since", type=_timestamp, help="ISO time, UTC if no zone")
        selection.add_argument("--until", type=_timestamp, help="ISO time, UTC if no zone")
        selection.add_argument("--limit", type=int, default=100 if name == "list" else None)
        if name == "export":
            selection.add_argument("--out", type=Path, help="file to write (default stdout)")
    audit.add_parser("verify", help="check the hash chain; exit 1 and name the broken rows")

    render = commands.add_parser(
        "render", help="PNG montage of a study's slices with lesions, outlined by class")
    render.add_argument("study_instance_uid")
    render.add_argument("out", type=Path)
    render.add_argument("--job", type=int, help="this job's result (default: the newest)")

    destinations = commands.add_parser(
        "destinations", help="where results go").add_subparsers(dest="action", required=True)
    destinations.add_parser("list", help="the configured destinations")
    echo = destinations.add_parser(
        "echo", help="C-ECHO (or, for STOW-RS, a QIDO-RS probe) a destination (all if none named)")
    echo.add_argument("name", nargs="?")

    deliveries = commands.add_parser(
        "deliveries", help="result deliveries per object and destination").add_subparsers(
        dest="action", required=True)
    listing = deliveries.add_parser("list", help="the newest deliveries")
    listing.add_argument("--state", choices=["pending", "delivered", "dead"])
    listing.add_argument("--destination")
    listing.add_argument("--limit", type=int, default=50)
    retry = deliveries.add_parser(
        "retry", help="send dead-lettered deliveries again (all, or those named)")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    retry.add_argument("--destination")
    return parser


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as error:
        print(f"lacuna: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    handler = COMMANDS[args.command]
    try:
        return handler(args, settings)
    except ConfigError as error:  # found at start-up, e.g. a metrics port already taken
        print(f"lacuna: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ModelError, JobError, PackageError) as error:
        print(f"lacuna: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except LookupError as error:
        print(f"lacuna: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_REFUSED
    except LacunaError as error:
        print(f"lacuna: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import EmbeddedNode

    receive, process = {"serve": (True, True), "scp": (True, False), "worker": (False, True)}[
        args.command
    ]
    logger.info("starting %s with %s", args.command,
                json.dumps(settings.describe(), default=str))
    receivers: list[int] = []
    if receive:
        _receive_on_the_storage_volume(settings)
        # Before any thread or database connection exists, so forking is safe.
        receivers = [pid for pid in (_fork_receiver(settings)
                                     for _ in range(settings.scp.processes - 1)) if pid]
    node = EmbeddedNode(settings, receive=receive, process=process)
    node.start()

    def stop(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping", signum)
        node.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if receivers:
        threading.Thread(target=_watch_receivers, args=(receivers, node), daemon=True).start()
    node.wait()
    for pid in receivers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    node.stop()  # finishes or releases a running job; nothing stays half-claimed
    for pid in receivers:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    logger.info("stopped")
    return EXIT_OK


def _fork_receiver(settings: Settings) -> int:
    """Fork one more receiving process on the shared port; returns its pid in the parent and
    never returns in the child (which exits when SIGTERM stops it). The child has no HTTP
    endpoint: the parent's answers for the host."""
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_FAILURE
    try:
        from node.app import EmbeddedNode

        child = EmbeddedNode(replace(settings, metrics=replace(settings.metrics, enabled=False)),
                             receive=True, process=False)
        child.start()
        signal.signal(signal.SIGTERM, lambda _signum, _frame: child.request_stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards a Ctrl-C as SIGTERM
        logger.info("receiving process %d started", os.getpid())
        child.wait()
        child.stop()
        code = EXIT_OK
    except BaseException:
        logger.exception("receiving process %d failed", os.getpid())
    finally:
        os._exit(code)  # never run the parent's code (atexit, its node) in the child


def _watch_receivers(receivers: list[int], node: Any) -> None:
    """Stop the node if a receiving process dies: a supervisor (systemd, Kubernetes) restarts
    the whole set rather than run with fewer receivers than configured."""
    try:
        pid, status = os.wait()
    except ChildProcessError:
        return
    if pid in receivers and not node.stopping:
        logger.error("receiving process %d exited (status %d); stopping", pid, status)
        node.request_stop()


def _receive_on_the_storage_volume(settings: Settings) -> None:
    """Incoming datasets stream to temporary files (pynetdicom writes them where ``tempfile``
    says); put those beside the storage so keeping one is a rename, and the free-space check
    covers them. A transfer older than a day was left by a crashed process."""
    import tempfile

    from node.dicom.storage import remove_stale_files

    incoming = settings.storage.root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(incoming)
    if removed := remove_stale_files(incoming, older_than_seconds=86400):
        logger.info("removed %d unfinished transfer(s) from %s", removed, incoming)


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from node.db.engine import build_engine, current_revision, downgrade, upgrade

    engine = build_engine(settings.database.url)
    if args.action == "upgrade":
        upgrade(engine)
    elif args.action == "downgrade":
        downgrade(engine, args.revision)
    print(f"schema revision: {current_revision(engine) or 'none'}")
    return EXIT_OK


def _synth(args: argparse.Namespace, settings: Settings) -> int:
    from training.synth import write_studies

    for study in write_studies(args.out, args.subjects, args.seed):
        print(f"{study.folder}: {len(study.ground_truth)} lesion(s), "
              f"{sum(len(p) for p in study.series.values())} instances")
    return EXIT_OK


def _train_plan(args: argparse.Namespace) -> TrainingPlan:
    """``lacuna train``'s plan: ``--recipe``, then the flags given (``--version`` included:
    without it, the plan's own default)."""
    from training.train import recipe_plan

    given = {key: value for key, value in (("version", args.version),
                                           ("primary_epochs", args.epochs)) if value is not None}
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
                 "cosine_decay": "cosine_decay", "context_slices": "context_slices", "loss": "loss"}


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

    package = args.model or settings.models.default_package
    seeds = list(range(args.first_seed, args.first_seed + args.subjects))
    problem = calibration_problem(read_manifest(package), args.out, args.version)
    if problem is not None:  # before minutes of loading and sweeping
        print(f"lacuna: {problem}", file=sys.stderr)
        return EXIT_USAGE

    progress = _subject_progress(args, "predicted")
    generator = "varied" if args.varied else args.generator or _trained_generator(package)
    manifest = calibrated_package(TwoStageEngine.load(package), package, args.out, args.version,
                                  seeds, generator=generator, progress=progress)
    if not args.json:
        print(file=sys.stderr)
    calibration = manifest.training["calibration"]
    if args.json:
        print(json.dumps({"model": f"{manifest.name} {manifest.version}", **calibration}, indent=2))
    else:
        print((args.out / CARD_NAME).read_text().split("## Calibration", 1)[1].strip())
        print(f"wrote {manifest.name} {manifest.version} to {args.out}: lesion threshold "
              f"{manifest.lesion_threshold}, lesions of at least {manifest.min_lesion_voxels} "
              "voxel(s)")
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
              "`lacuna calibrate` chooses one")
    return EXIT_OK


def _trained_generator(package: Path) -> str:
    """The generator a package's networks were trained on, from its manifest."""
    from models.package import read_manifest

    training = read_manifest(package).training
    if training.get("varied"):
        return "varied"
    return "realistic" if training.get("realistic") else "standard"


# What `lacuna evaluate` says each generator is.
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
        breakdown_markdown,
        evaluate_subjects,
        froc_markdown,
        reliability_markdown,
        report_markdown,
        size_markdown,
    )
    from training.metrics import (
        SubjectCounts,
        bootstrap_intervals,
        breakdown,
        froc,
        recall_by_size,
        reliability,
        summarise,
    )

    package = args.model or settings.models.default_package
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
    metrics, intervals = summarise(counts), bootstrap_intervals(counts)
    by_size = recall_by_size(counts)
    if args.json:
        calibration = reliability(counts)
        print(json.dumps({"model": f"{manifest.name} {manifest.version}", "generator": generator,
                          "seeds": [seeds[0], seeds[-1]],
                          "metrics": metrics, "intervals": intervals,
                          "recall_by_size": [vars(b) for b in by_size],
                          "froc": froc(counts),
                          "breakdown": {k: [vars(r) for r in rows]
                                        for k, rows in breakdown(counts).items()},
                          "expected_calibration_error": calibration.expected_calibration_error,
                          "earlier_truth_metrics": summarise(earlier) if earlier else None},
                         indent=2))
    table = report_markdown(metrics, intervals, f"{manifest.name} {manifest.version}, "
                                               f"{_GENERATOR_NAMES[generator]}, "
                                               f"seeds {seeds[0]}-{seeds[-1]}")
    if earlier:
        table += "\n" + report_markdown(
            summarise(earlier), bootstrap_intervals(earlier),
            "The same predictions on the earlier truth rule (2 of 5 samples inside), for "
            "comparison only")
    table += "\nFROC:\n\n" + froc_markdown(counts)
    table += "\nWhere it fails:\n\n" + breakdown_markdown(counts)
    table += "\nClassifier certainty (as reported in the SR):\n\n" + reliability_markdown(counts)
    table += "\nDetection recall by true lesion volume:\n\n" + size_markdown(by_size)
    if not args.json:
        print(table)
    if args.out:
        args.out.write_text(table)
    return EXIT_OK


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from node.demo import run_demo

    return run_demo(args.workdir.resolve(), args.seed, settings.models)


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services import audit, registry

    database = open_database(settings)
    actor = audit.admin_actor()
    if args.action == "compare":
        return _models_compare(args, settings, database)
    with database.sessions.begin() as session:
        if args.action == "list":
            versions = registry.list_versions(session)
            bundled = {v.id for v in versions
                       if registry.is_bundled(v, settings.models.default_package)}
            if args.json:
                print(json.dumps([{**_version_json(v), "bundled_synthetic": v.id in bundled}
                                  for v in versions], indent=2))
            else:
                print(format_table(
                    ["", "name", "version", "registered (UTC)", "activated (UTC)", "note",
                     "path"],
                    [["*" if v.active else "~" if v.shadow else "", v.name, v.version,
                      f"{v.registered_at:%Y-%m-%d %H:%M}",
                      f"{v.activated_at:%Y-%m-%d %H:%M}" if v.activated_at else "",
                      "BUNDLED, synthetic-trained: not for clinical use" if v.id in bundled
                      else "", v.path]
                     for v in versions]))
            return EXIT_OK
        if args.action == "show":
            return _models_show(session, registry.find_version(session, args.name, args.version),
                                args.json)
        if args.action == "verify":
            results = registry.verify_all(session, actor)
            if args.json:
                print(json.dumps([vars(r) for r in results], indent=2))
            else:
                print(format_table(["name", "version", "files", "detail"],
                                   [[r.name, r.version, "ok" if r.ok else "FAILED", r.detail]
                                    for r in results]))
            return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE
        if args.action == "register":
            from models.smoke import smoke_test_package  # loads TensorFlow

            version = registry.register(session, args.package, actor, smoke_test_package,
                                        store=settings.storage.model_store)
        elif args.action == "activate":
            version = registry.activate(session, args.name, args.version, actor)
        elif args.action == "shadow":
            if args.stop:
                version = registry.stop_shadow(session, actor)
            elif args.name and args.version:
                version = registry.start_shadow(session, args.name, args.version, actor)
            else:
                print("lacuna: models shadow needs NAME VERSION, or --stop", file=sys.stderr)
                return EXIT_USAGE
        else:
            version = registry.rollback(session, actor)
        state = " (active)" if version.active else " (shadow)" if version.shadow else ""
        if args.json:
            print(json.dumps({"action": args.action, **_version_json(version)}))
        else:
            print(f"{args.action}: {version.name} {version.version}{state}")
    return EXIT_OK


def _version_json(version: Any) -> dict[str, Any]:
    return {
        "name": version.name, "version": version.version, "active": version.active,
        "shadow": version.shadow, "path": version.path,
        "manifest_sha256": version.manifest_sha256,
        "registered_at": version.registered_at.isoformat(),
        "activated_at": version.activated_at.isoformat() if version.activated_at else None,
    }


def _models_show(session: Any, version: Any, as_json: bool) -> int:
    from sqlalchemy import func

    from node.db.tables import Job

    jobs = dict(session.execute(
        select(Job.state, func.count()).where(Job.model_version_id == version.id)
        .group_by(Job.state)).all())
    manifest = version.manifest
    shown = {**_version_json(version), "jobs_by_state": jobs,
             "trained_on": manifest.get("trained_on"),
             "intended_use": manifest.get("intended_use"),
             "metrics": manifest.get("metrics", {}), "files": manifest.get("files", {}),
             "input_matrix": manifest.get("input_matrix"),
             "thresholds": {key: manifest.get(key) for key in
                            ("lesion_threshold", "laci_threshold", "min_lesion_voxels")}}
    if as_json:
        print(json.dumps(shown, indent=2, default=str))
        return EXIT_OK
    for key, value in shown.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, inner_value in value.items():
                print(f"  {inner}: {inner_value}")
        else:
            print(f"{key}: {value}")
    return EXIT_OK


def _models_compare(args: argparse.Namespace, settings: Settings, database: Any) -> int:
    from node.services import registry, shadow

    with database.sessions.begin() as session:
        candidate = (registry.find_version(session, args.name, args.version)
                     if args.name and args.version else registry.shadow_version(session))
        if candidate is None:
            raise ModelError("no model version is in shadow mode: name one to compare")
        comparison = shadow.compare(session, settings.storage.root, candidate)
    summary = {
        "candidate": comparison.candidate, "studies_compared": len(comparison.studies),
        "pending": comparison.pending,
        "mean_dice": _rounded(comparison.mean_dice), "median_dice": _rounded(comparison.median_dice),
        "same_lesion_counts": _rounded(comparison.count_agreement),
    }
    if args.json:
        print(json.dumps({**summary, "studies": [
            {"study_instance_uid": s.study_instance_uid, "clinical_job": s.clinical_job_id,
             "shadow_job": s.shadow_job_id, "clinical_model": s.clinical_model,
             "clinical": s.clinical_findings, "shadow": s.shadow_findings,
             "dice": round(s.dice, 4)} for s in comparison.studies]}, indent=2))
        return EXIT_OK
    print(format_table(
        ["study", "clinical model", "clinical FCI/LACI/unclassified", "shadow FCI/LACI/unclassified",
         "dice"],
        [[s.study_instance_uid, s.clinical_model, _counts(s.clinical_findings),
          _counts(s.shadow_findings), f"{s.dice:.3f}"] for s in comparison.studies]))
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return EXIT_OK


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _counts(findings: dict[str, int]) -> str:
    return "/".join(str(findings.get(key, 0)) for key in ("FCI", "LACI", "UNCLASSIFIED"))


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.db.tables import Job, ModelVersion, ResultObject, Study
    from node.services import audit
    from node.services.job_admin import cancel_job, retry_job

    database = open_database(settings)
    with database.sessions.begin() as session:
        if args.action in ("retry", "cancel"):
            act = retry_job if args.action == "retry" else cancel_job
            job = act(session, args.job_id, audit.admin_actor())
            print(f"job {job.id}: {job.state}")
            return EXIT_OK
        if args.action == "list":
            rows = session.execute(
                select(Job, Study.study_instance_uid, ModelVersion.name, ModelVersion.version)
                .join(Study, Job.study_id == Study.id)
                .join(ModelVersion, Job.model_version_id == ModelVersion.id)
                .order_by(Job.id.desc()).limit(args.limit)
            ).all()
            if args.json:
                print(json.dumps([{"id": job.id, "state": job.state, "run": job.run,
                                   "priority": job.priority, "shadow": job.shadow,
                                   "created_at": job.created_at.isoformat(),
                                   "model_version": f"{name} {version}",
                                   "study_instance_uid": study_uid}
                                  for job, study_uid, name, version in rows], indent=2))
                return EXIT_OK
            print(format_table(
                ["id", "state", "created (UTC)", "run", "prio", "model", "study"],
                [[job.id, job.state + (" (shadow)" if job.shadow else ""),
                  f"{job.created_at:%Y-%m-%d %H:%M:%S}", job.run, job.priority,
                  f"{name} {version}", study_uid] for job, study_uid, name, version in rows]))
            return EXIT_OK
        shown = session.get(Job, args.job_id)
        if shown is None:
            raise LookupError(f"no job {args.job_id}")
        results = session.scalars(select(ResultObject).where(ResultObject.job_id == shown.id))
        print(json.dumps({
            "id": shown.id, "state": shown.state, "attempts": shown.attempts,
            "created_at": shown.created_at.isoformat(),
            "started_at": shown.started_at.isoformat() if shown.started_at else None,
            "finished_at": shown.finished_at.isoformat() if shown.finished_at else None,
            "error": shown.error, "timings_s": shown.timings, "findings": shown.findings,
            "shadow": shown.shadow, "model_version_id": shown.model_version_id,
            "results": [{"kind": r.kind, "sop_instance_uid": r.sop_instance_uid,
                         "path": r.path} for r in results],
        }, indent=2))
    return EXIT_OK


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.db.tables import AuditEvent
    from node.services import audit

    database = open_database(settings)
    if args.action == "verify":
        with database.sessions.begin() as session:
            checked, breaks = audit.verify(session)
        if args.json:
            print(json.dumps({"checked": checked, "intact": not breaks,
                              "breaks": [{"event_id": b.event_id, "seq": b.seq,
                                          "problem": b.problem} for b in breaks]}))
        else:
            for problem in breaks:
                print(f"BROKEN {problem}")
            print(f"{checked} event(s) checked: "
                  f"{'chain intact' if not breaks else f'{len(breaks)} break(s)'}")
        return EXIT_OK if not breaks else EXIT_FAILURE

    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if args.limit is not None:
        query = query.limit(args.limit)
    for column, value in ((AuditEvent.study_instance_uid, args.study),
                          (AuditEvent.calling_ae, args.ae),
                          (AuditEvent.action, args.event_action), (AuditEvent.job_id, args.job)):
        if value is not None:
            query = query.where(column == value)
    if args.since is not None:
        query = query.where(AuditEvent.occurred_at >= args.since)
    if args.until is not None:
        query = query.where(AuditEvent.occurred_at < args.until)
    with database.sessions.begin() as session:
        events = list(reversed(list(session.scalars(query))))
    if args.action == "export" or args.json:
        out = args.out.open("w", encoding="utf-8") if getattr(args, "out", None) else sys.stdout
        try:
            for event in events:
                out.write(json.dumps(_event_json(event), default=str) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        return EXIT_OK
    print(format_table(
        ["id", "time (UTC)", "action", "actor", "where", "details"],
        [[event.id, f"{event.occurred_at:%Y-%m-%d %H:%M:%S}", event.action, event.actor,
          " ".join(f"{k}={v}" for k, v in (
              ("ae", event.calling_ae), ("study", event.study_instance_uid),
              ("sop", event.sop_instance_uid), ("job", event.job_id),
              ("model", event.model_version)) if v),
          json.dumps(event.details, default=str)] for event in events],
    ))
    return EXIT_OK


def _event_json(event: Any) -> dict[str, Any]:
    return {
        "id": event.id, "seq": event.chain_seq, "occurred_at": event.occurred_at.isoformat(),
        "action": event.action, "actor": event.actor, "calling_ae": event.calling_ae,
        "peer_address": event.peer_address, "study_instance_uid": event.study_instance_uid,
        "series_instance_uid": event.series_instance_uid,
        "sop_instance_uid": event.sop_instance_uid, "job_id": event.job_id,
        "model_version": event.model_version, "details": event.details,
        "prev_hash": event.prev_hash, "hash": event.hash,
    }


def _render(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services.rendering import render_study

    database = open_database(settings)
    out = render_study(database.sessions, settings.storage.root, args.study_instance_uid,
                       args.out, args.job)
    print(out)
    return EXIT_OK


def _destinations(args: argparse.Namespace, settings: Settings) -> int:
    configured = settings.destinations
    if args.action == "list":
        if args.json:
            print(json.dumps([vars(d) for d in configured], indent=2))
        else:
            print(format_table(["name", "protocol", "objects", "address"],
                               [[d.name, d.protocol, ",".join(d.objects), d.address]
                                for d in configured]))
        return EXIT_OK
    from node.dicom.dicomweb import probe
    from node.dicom.scu import echo

    chosen = [d for d in configured if args.name in (None, d.name)]
    if not chosen:
        print(f"lacuna: no destination named {args.name!r} (see `lacuna destinations list`)",
              file=sys.stderr)
        return EXIT_USAGE
    answers = [(d, probe(d) if d.url else echo(d, settings.scp.ae_title)) for d in chosen]
    if args.json:
        print(json.dumps([{"name": d.name, "ok": ok, "detail": detail, "seconds": round(t, 3)}
                          for d, (ok, detail, t) in answers], indent=2))
    else:
        print(format_table(["name", "result", "ms", "detail"],
                           [[d.name, "ok" if ok else "FAILED", f"{1000 * t:.0f}", detail]
                            for d, (ok, detail, t) in answers]))
    return EXIT_OK if all(ok for _, (ok, _, _) in answers) else EXIT_FAILURE


def _deliveries(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.db.tables import Delivery, ResultObject
    from node.services import audit
    from node.services.export import requeue_dead

    database = open_database(settings)
    with database.sessions.begin() as session:
        if args.action == "retry":
            requeued = requeue_dead(session, args.ids or None, args.destination,
                                    audit.admin_actor(), datetime.now(UTC))
            if args.json:
                print(json.dumps({"requeued": requeued}))
            else:
                print(f"{len(requeued)} dead-lettered deliver{'y' if len(requeued) == 1 else 'ies'} "
                      f"queued again{': ' + ', '.join(map(str, requeued)) if requeued else ''}")
            return EXIT_OK if requeued or not args.ids else EXIT_FAILURE
        query = (select(Delivery, ResultObject)
                 .join(ResultObject, ResultObject.id == Delivery.result_object_id)
                 .order_by(Delivery.id.desc()).limit(args.limit))
        if args.state:
            query = query.where(Delivery.state == args.state)
        if args.destination:
            query = query.where(Delivery.destination == args.destination)
        rows = session.execute(query).all()
        if args.json:
            print(json.dumps([{"id": d.id, "job_id": r.job_id, "kind": r.kind, "state": d.state,
                               "destination": d.destination, "attempts": d.attempts,
                               "status": d.status, "error": d.error,
                               "updated_at": d.updated_at.isoformat(),
                               "next_attempt_at": (d.next_attempt_at.isoformat()
                                                   if d.next_attempt_at else None),
                               "sop_instance_uid": r.sop_instance_uid} for d, r in rows], indent=2))
            return EXIT_OK
        print(format_table(
            ["id", "job", "kind", "destination", "state", "tries", "updated (UTC)", "error"],
            [[d.id, r.job_id, r.kind, d.destination, d.state, d.attempts,
              f"{d.updated_at:%Y-%m-%d %H:%M:%S}", d.error or ""] for d, r in rows]))
        return EXIT_OK


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns; the last column is not padded (it may be long)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    lines = ["  ".join([c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]])
             .rstrip() for row in cells]
    return "\n".join(lines)


COMMANDS = {
    "serve": _serve, "scp": _serve, "worker": _serve, "db": _db, "synth": _synth,
    "train": _train, "evaluate": _evaluate, "ablation": _ablation, "crossval": _crossval,
    "calibrate": _calibrate, "ensemble": _ensemble, "demo": _demo,
    "models": _models, "jobs": _jobs, "audit": _audit,
    "destinations": _destinations, "deliveries": _deliveries, "render": _render,
}


if __name__ == "__main__":
    raise SystemExit(main())
