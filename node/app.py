"""The composition root: builds the engine once, wires the services, runs the embedded node
(SCP, scheduler and worker in one process)."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass

import pydicom.config
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import Engine

from node.config import Settings
from node.db.engine import SessionFactory, build_engine, migrate, session_factory, startup_lock, upgrade
from node.dicom.aioscp import start_asyncio_scp
from node.dicom.ports import Receiver
from node.dicom.scp import start_scp
from node.dicom.storage import remove_stale_files
from node.errors import ConfigError
from node.health import Check, CheckResult, HealthServer, database_check, disk_check, storage_check
from node.metrics import NodeMetrics
from node.services import registry
from node.services.export import Exporter
from node.services.intake import Intake
from node.services.node_identity import node_identity
from node.services.processing import EngineCache, Processor, ResultOptions
from node.services.reception import NodeReception
from node.services.scheduler import Scheduler
from node.services.worker import Worker

logger = logging.getLogger(__name__)


def configure_libraries() -> None:
    """The process-wide settings of the libraries the node relies on, set here and nowhere
    else (idempotent; the tests call it too)."""
    # Intake checks what it relies on (UIDs, pixel data length) itself and answers with a
    # status; pydicom's read-time value warnings would only make that depend on the
    # process's warning filters.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # Received datasets go to a temporary file, never whole into memory: large multi-frame
    # objects and many associations at once cost disk, not RAM, and the file is renamed
    # into storage.
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True


def receive_on_the_storage_volume(settings: Settings) -> None:
    """Incoming datasets stream to temporary files (either receiver writes them where
    ``tempfile`` says); put those beside the storage so keeping one is a rename, and the free-space check
    covers them. A transfer older than a day was left by a crashed process. For a process
    that receives, once, before any association."""
    incoming = settings.storage.root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(incoming)
    if removed := remove_stale_files(incoming, older_than_seconds=86400):
        logger.info("removed %d unfinished transfer(s) from %s", removed, incoming)


@dataclass
class Database:
    engine: Engine
    sessions: SessionFactory


def open_database(settings: Settings, migrate: bool = True) -> Database:
    engine = build_engine(settings.database.url)
    if migrate:
        upgrade(engine)
    return Database(engine, session_factory(engine))


def open_node_database(settings: Settings) -> Database:
    """Migrate and, on first start, register and activate the bundled model (not with
    ``models.require_registered``, which also refuses a bundled model the node activated
    itself) and make the node's identity: under one lock, so an scp and workers that start
    together on an empty database do not race."""
    engine = build_engine(settings.database.url)
    sessions = session_factory(engine)
    with startup_lock(engine):
        migrate(engine)
        with sessions.begin() as session:
            if settings.models.require_registered:
                active = registry.active_version(session)
                if active is not None and registry.activated_at_first_start(session, active):
                    raise ConfigError(
                        "models.require_registered",
                        f"the active model {active.name} {active.version} was activated by the "
                        "node at its first start, not by an administrator; activate a "
                        "registered model (lacuna models activate NAME VERSION) first")
            elif registry.ensure_default(session, bundled := registry.bundled_package(
                    settings.models), store=settings.storage.model_store):
                logger.info("registered and activated the bundled model %s", bundled)
            node_identity(session)  # made once, on the first start
    return Database(engine, sessions)


SYNTHETIC_WARNING_INTERVAL_S = 900.0
# How often a waiting node's main thread wakes to run signal handlers (seconds).
STOP_CHECK_S = 0.5


def synthetic_model_warning(settings: Settings, sessions: SessionFactory) -> str | None:
    """Why this node's results must not reach a real PACS unnoticed, or None: the bundled,
    synthetic-trained model is active and results go to configured destinations."""
    if not settings.destinations:
        return None
    with sessions.begin() as session:
        version = registry.active_version(session)
        if version is None or not registry.is_bundled(version, registry.bundled_package(settings.models)):
            return None
        label = f"{version.name} {version.version}"
    names = ", ".join(destination.name for destination in settings.destinations)
    return (f"the bundled synthetic-trained model {label} is active and its results go to "
            f"{names}: not for clinical use. Register and activate a validated model, or set "
            "models.require_registered = true")


class EmbeddedNode:
    """A node process. By default both roles (``lacuna serve``): the SCP listens, and a
    background thread schedules and runs jobs. ``receive=False`` is ``lacuna worker``;
    ``process=False`` is ``lacuna scp``, which never loads a model (nor TensorFlow). Any number
    of either share one database and one storage root."""

    def __init__(self, settings: Settings, receive: bool = True, process: bool = True) -> None:
        if not (receive or process):
            raise ValueError("a node must receive, process or both")
        configure_libraries()
        self.settings = settings
        self.receive, self.process = receive, process
        self.database = open_node_database(settings)
        sessions = self.database.sessions
        root = settings.storage.root
        root.mkdir(parents=True, exist_ok=True)
        self.metrics = NodeMetrics()
        self.metrics.watch_database(sessions)
        self.intake = Intake(root, sessions, urgency=settings.study.urgency_rule(),
                             min_free_bytes=settings.storage.min_free_bytes,
                             max_dataset_bytes=settings.scp.max_dataset_mb * 2**20)
        self.scheduler = Scheduler(sessions, settings.study.completeness_rules(),
                                   metrics=self.metrics, role_rules=settings.series_roles)
        self.exporter = Exporter(sessions, root, settings.destinations, settings.scp.ae_title,
                                 settings.worker, metrics=self.metrics)
        self.processor = Processor(sessions, root, EngineCache(), ResultOptions(
            fallbacks=frozenset(self.exporter.wanted_kinds & {"GSPS", "SC"}),
            rejection_notes="KOS" in self.exporter.wanted_kinds,
            per_lesion=settings.results.segment_per_lesion))
        self.worker = Worker(
            sessions,
            self.processor,
            self.exporter,
            settings.worker,
            metrics=self.metrics,
        )
        self._stop = threading.Event()
        self.model_ready = threading.Event()  # set once the active model is loaded (or failed)
        self.model_error: str | None = None  # why the active model could not be loaded
        self._load_failed_at = 0.0
        self._warned_at: float | None = None  # when the synthetic-model warning was last logged
        self._server: Receiver | None = None
        self._thread: threading.Thread | None = None
        self.http: HealthServer | None = None  # bound in start(), after the DICOM port

    def readiness_checks(self) -> dict[str, Check]:
        """What /ready checks: the database, the storage root, free disk and, for a process
        that runs jobs, the active model loaded."""
        root = self.settings.storage.root
        checks: dict[str, Check] = {
            "database": database_check(self.database.sessions),
            "storage": storage_check(root),
            "disk": disk_check(root, self.settings.storage.min_free_bytes),
        }
        if self.process:
            checks["model"] = self._model_check
        return checks

    def _model_check(self) -> CheckResult:
        if not self.model_ready.is_set():
            return CheckResult(False, "loading")
        loaded = self.processor.active_model_loaded()
        if loaded is not None:
            warning = synthetic_model_warning(self.settings, self.database.sessions)
            return CheckResult(True, loaded if warning is None else f"{loaded}; WARNING: {warning}")
        return CheckResult(False, self.model_error or "active model not loaded yet")

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("node is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self.receive:
            reception = NodeReception(self.intake, self.database.sessions, self.metrics)
            start = start_asyncio_scp if self.settings.scp.engine == "asyncio" else start_scp
            self._server = start(self.settings.scp, reception)
        # The DICOM port first: an HTTP port of 0 must not be handed the port the SCP was
        # configured for.
        if self.settings.metrics.enabled:
            self.http = HealthServer(self.settings.metrics.host, self.settings.metrics.port,
                                     self.metrics, self.readiness_checks())
            self.http.start()
        if self.process:
            self._thread = threading.Thread(target=self._loop, name="lacuna-worker", daemon=True)
            self._thread.start()

    def _preload(self) -> None:
        """Load the active model if it is not yet (first start, or after an activation); a
        failed load is retried once a minute, not on every poll."""
        if self.model_error is not None and time.monotonic() - self._load_failed_at < 60:
            return
        try:
            self.processor.preload()
            self.model_error = None
        except Exception as error:  # a broken package fails its jobs with the reason; keep serving
            if self.model_error is None:
                logger.exception("could not load the active model")
            self.model_error = f"cannot load: {type(error).__name__}: {error}"[:300]
            self._load_failed_at = time.monotonic()
        self.model_ready.set()

    def _warn_if_synthetic(self) -> None:
        """Log :func:`synthetic_model_warning` at start and every 15 minutes while it holds."""
        if (self._warned_at is not None
                and time.monotonic() - self._warned_at < SYNTHETIC_WARNING_INTERVAL_S):
            return
        warning = synthetic_model_warning(self.settings, self.database.sessions)
        if warning is not None:
            logger.warning("%s", warning)
            self._warned_at = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._preload()
            try:
                self._warn_if_synthetic()
            except Exception:  # a failed check must not stop the worker; it is retried
                logger.exception("could not check the active model")
            try:
                self.scheduler.run_once()
                while not self._stop.is_set() and self.worker.run_once() is not None:
                    self.scheduler.run_once()
                while not self._stop.is_set() and self.exporter.deliver_due():
                    pass  # deliveries due for a retry, in batches
            except Exception:  # keep the loop alive; the failure is logged with its traceback
                logger.exception("scheduler/worker loop error")
            self._stop.wait(self.settings.worker.poll_seconds)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe in a signal handler); :meth:`stop` does the rest."""
        self._stop.set()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop receiving, let a running job finish for up to ``grace_seconds`` (default
        ``[worker] shutdown_grace_seconds``), else release it to the queue, audited."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self.http is not None:
            self.http.stop()
        if self._thread is not None:
            grace = self.settings.worker.shutdown_grace_seconds if grace_seconds is None else grace_seconds
            self._thread.join(timeout=grace)
            if self._thread.is_alive():
                self.worker.release_current(f"shutdown: not finished within {grace:g} s")
        self.database.engine.dispose()

    def wait(self) -> None:
        """Return once :meth:`request_stop` is called. The main thread waits in short steps:
        Python runs a signal handler only in the main thread, and only when it wakes, while
        the kernel may hand SIGTERM to any thread; a wait without a timeout then never woke
        (seen: a worker that ignored its SIGTERM until a second one came)."""
        while not self._stop.wait(timeout=STOP_CHECK_S):
            pass


