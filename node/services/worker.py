"""The worker: claim a job under a lease, process it (or reuse its stored results), queue
them for delivery, and record the outcome; retryable failures go back to the queue with backoff.

Every job state change commits together with its audit row.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from node.config import WorkerSettings
from node.db.engine import SessionFactory
from node.db.jobs import claim_next_job, holds_lease, renew_lease, require_lease
from node.db.tables import Job, ModelVersion, Study, utcnow
from node.domain.jobs import JobState, check_transition, retry_delay, state_after_failure
from node.errors import LacunaError, LeaseLost
from node.metrics import NodeMetrics
from node.services import audit
from node.services.export import Exporter, delivery_counts
from node.services.processing import Processor, RunReport

logger = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    study_id: int
    model_version_id: int
    attempts: int
    study_uid: str | None
    last_received_at: datetime | None
    shadow: bool = False  # a candidate model's run: results kept, never exported


class Worker:
    def __init__(
        self,
        sessions: SessionFactory,
        processor: Processor,
        exporter: Exporter,
        settings: WorkerSettings,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._sessions = sessions
        self._processor = processor
        self._exporter = exporter
        self._settings = settings
        self.owner = owner or default_worker_id()
        self._clock = clock
        self._current: ClaimedJob | None = None  # the job this worker is running, if any
        # A claim and its registration as _current happen under this lock, so a shutdown's
        # release_current never falls between them (the claim is committed, and audited,
        # before _current is set); after a release the worker claims nothing more.
        self._claim_lock = threading.Lock()
        self._released = False
        self._released_job_id: int | None = None  # the job release_current handed back

    def run_once(self) -> RunReport | None:
        """Process the next claimable job, if any; returns its report (None when idle, and
        always after :meth:`release_current`)."""
        with self._claim_lock:
            if self._released:
                return None
            claimed = self._claim()
            if claimed is None:
                return None
            self._current = claimed
        try:
            return self._run(claimed)
        finally:
            self._current = None

    def release_current(self, reason: str) -> int | None:
        """Give the running job back to the queue (shutdown) and claim nothing more: the job
        becomes claimable at once and its next attempt reuses whatever results this one stored.
        Returns its id, or None when there was nothing to release. Safe to call from another
        thread than the one running."""
        with self._claim_lock:  # waits for a claim in progress to be registered
            self._released = True
            claimed = self._current
        if claimed is None:
            return None
        with self._sessions.begin() as session:
            if not holds_lease(session, claimed.job_id, self.owner):
                return None
            job = _locked_job(session, claimed.job_id)  # locked by holds_lease already
            check_transition(JobState(job.state), JobState.QUEUED)
            job.state = JobState.QUEUED
            job.lease_owner, job.lease_expires_at, job.not_before = None, None, None
            audit.record(session, "job.released", study_instance_uid=claimed.study_uid,
                         job_id=job.id, attempt=job.attempts, worker=self.owner, reason=reason)
            self._released_job_id = job.id
        logger.warning("job %d released: %s", claimed.job_id, reason)
        return claimed.job_id

    def _run(self, claimed: ClaimedJob) -> RunReport:
        job_id = claimed.job_id
        report = RunReport()
        started = time.perf_counter()
        stop_renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job_id, stop_renewing),
                                   name=f"lease-{job_id}", daemon=True)
        renewer.start()
        try:
            inputs = self._processor.inputs(job_id)
            # Results are built once per job: a retry reuses them (same UIDs) and only
            # delivers what no destination has acknowledged yet.
            report = (self._processor.stored_results(job_id)
                      or self._processor.run(job_id, inputs, self.owner))
            with self._sessions.begin() as session:  # released or taken over meanwhile: stop
                require_lease(session, job_id, self.owner)
            if not claimed.shadow:
                # Queue the results for their destinations and try each once now; a
                # destination that is down is retried by the delivery queue, not by this job.
                clock = time.perf_counter()
                self._exporter.enqueue(job_id)
                self._exporter.deliver_due(job_id=job_id)
                report.timings["export"] = time.perf_counter() - clock
        except LeaseLost as error:
            stop_renewing.set()
            if self._released_job_id == job_id:
                # Handed back by release_current (shutdown), which recorded job.released: the
                # job is queued again, not failed, and nothing more happened to it.
                logger.info("job %d: stopped after its release", job_id)
                return report
            # Taken over after our lease expired: the other worker's outcome stands.
            logger.warning("job %d: %s", job_id, error)
            self._finish(claimed, JobState.FAILED, report, reason=str(error))  # audits lease_lost
            return report
        except Exception as error:  # the edge: a failure becomes a job state plus an audit row
            stop_renewing.set()
            retryable = getattr(error, "retryable", False) or isinstance(error, OperationalError)
            if not isinstance(error, LacunaError):
                logger.exception("job %d failed", job_id)
            self._fail(claimed, report, f"{type(error).__name__}: {error}", retryable)
            return report
        finally:
            stop_renewing.set()
            renewer.join()
        report.timings["total"] = time.perf_counter() - started
        if claimed.last_received_at is not None and "inference" in report.timings:
            # From the last instance received to the start of processing: quiet period + queue.
            since_last = (self._clock() - claimed.last_received_at).total_seconds()
            report.timings["wait"] = since_last - report.timings["total"]
        self._finish(claimed, JobState.DONE, report)
        if not claimed.shadow:
            if "inference" in report.timings:
                self._metrics.inference_seconds.observe(report.timings["inference"])
            if "wait" in report.timings:
                self._metrics.end_to_end_seconds.observe(
                    report.timings["wait"] + report.timings["total"])
        logger.info("job %d done: %d lesion(s) in %.1f s", job_id,
                    len(report.lesions.lesions) if report.lesions else 0, report.timings["total"])
        return report

    def _claim(self) -> ClaimedJob | None:
        with self._sessions.begin() as session:
            claim = claim_next_job(session, self.owner, self._clock(), self._settings.lease_seconds)
            if claim is None:
                return None
            job = claim.job
            study = session.get(Study, job.study_id)
            version = session.get(ModelVersion, job.model_version_id)
            claimed = ClaimedJob(
                job_id=job.id, study_id=job.study_id, model_version_id=job.model_version_id,
                attempts=job.attempts,
                study_uid=study.study_instance_uid if study else None,
                last_received_at=study.last_received_at if study else None,
                shadow=job.shadow,
            )
            audit.record(
                session, "job.reclaimed" if claim.previous_owner else "job.started",
                study_instance_uid=claimed.study_uid, job_id=job.id,
                model_version=f"{version.name} {version.version}" if version else None,
                attempt=job.attempts, worker=self.owner, previous_worker=claim.previous_owner,
            )
        logger.info("job %d attempt %d started by %s", job.id, claimed.attempts, self.owner)
        return claimed

    def _renew(self, job_id: int, stop: threading.Event) -> None:
        """Renew the lease every third of its length until ``stop`` is set."""
        while not stop.wait(self._settings.lease_seconds / 3):
            try:
                with self._sessions.begin() as session:
                    if not renew_lease(session, job_id, self.owner, self._clock(),
                                       self._settings.lease_seconds):
                        logger.warning("job %d: lease lost", job_id)
                        return
            except Exception:  # a missed renewal is retried on the next tick
                logger.exception("job %d: could not renew the lease", job_id)

    def _fail(self, claimed: ClaimedJob, report: RunReport, reason: str, retryable: bool) -> None:
        target = state_after_failure(claimed.attempts, self._settings.max_attempts, retryable)
        details: dict[str, Any] = {"retryable": retryable}
        not_before = None
        if target is JobState.QUEUED:
            delay = retry_delay(claimed.attempts, self._settings.retry_base_seconds,
                                self._settings.retry_max_seconds, random.random())
            not_before = self._clock() + timedelta(seconds=delay)
            details["retry_in_seconds"] = round(delay, 2)
        self._finish(claimed, target, report, reason=reason, not_before=not_before, **details)
        logger.warning("job %d %s: %s", claimed.job_id,
                       "will be retried" if target is JobState.QUEUED else "failed", reason)

    def _finish(
        self,
        claimed: ClaimedJob,
        state: JobState,
        report: RunReport,
        reason: str | None = None,
        not_before: datetime | None = None,
        **details: Any,
    ) -> None:
        with self._sessions.begin() as session:
            job = _locked_job(session, claimed.job_id)
            if job.lease_owner != self.owner or job.state != JobState.RUNNING:
                if self._released_job_id == job.id:
                    return  # we handed it back (job.released): queued, not lost
                # Our lease expired and another worker took the job: its outcome stands.
                audit.record(session, "job.lease_lost", study_instance_uid=claimed.study_uid,
                             job_id=job.id, worker=self.owner, current_worker=job.lease_owner)
                return
            check_transition(JobState(job.state), state)
            job.state = state
            job.finished_at = self._clock() if state is not JobState.QUEUED else None
            job.error = reason
            job.not_before = not_before
            job.lease_owner, job.lease_expires_at = None, None
            job.timings = {k: round(v, 3) for k, v in report.timings.items()}
            details["timings"] = job.timings
            if reason:
                details["reason"] = reason[:1000]
            if state is JobState.DONE and not claimed.shadow:
                details["deliveries"] = delivery_counts(session, job.id)
            if report.findings is not None:
                details["lesions"] = sum(report.findings.values())
            action = {JobState.DONE: "job.finished", JobState.FAILED: "job.failed",
                      JobState.QUEUED: "job.retry_scheduled"}[state]
            audit.record(session, action, study_instance_uid=claimed.study_uid, job_id=job.id,
                         attempt=job.attempts, **details)
        self._metrics.jobs_finished.labels(state=state.value).inc()


def _locked_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise LookupError(f"job {job_id} vanished")
    return job
