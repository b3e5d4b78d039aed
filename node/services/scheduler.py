"""The scheduler: studies that are complete enough (:mod:`node.domain.completeness`) get their
series roles and, when a T2 FLAIR exists, a job for the active model version.

A study is run once per model version; new instances after its run was queued (late arrivals)
queue run n + 1, whose results supersede run n's (new series, audited with the reason)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.db.engine import SessionFactory
from node.db.tables import Instance, Job, ModelVersion, Series, Study, utcnow
from node.domain.completeness import CompletenessRules, Readiness, SeriesProgress, readiness
from node.domain.jobs import JobState, StudyState
from node.domain.priority import job_priority
from node.domain.series import (
    FLAIR_ROLES,
    RoleDecision,
    RoleRules,
    SeriesAttributes,
    SeriesRole,
    assign_roles,
    series_attributes_from_json,
)
from node.metrics import NodeMetrics
from node.services import audit, registry

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        sessions: SessionFactory,
        completeness: CompletenessRules,
        clock: Callable[[], datetime] = utcnow,
        metrics: NodeMetrics | None = None,
        role_rules: RoleRules | None = None,
    ) -> None:
        self._sessions = sessions
        self._completeness = completeness
        self._clock = clock
        self._metrics = metrics or NodeMetrics()
        self._role_rules = role_rules or RoleRules()
        self._waiting_for_model: set[str] = set()  # studies already logged as waiting

    def run_once(self) -> list[int]:
        """Schedule every study that is ready; returns the ids of jobs queued."""
        queued: list[int] = []
        with self._sessions.begin() as session:
            study_ids = list(
                session.scalars(select(Study.id).where(Study.state == StudyState.RECEIVING))
            )
        for study_id in study_ids:
            # Decide without a lock first: intake updates a receiving study with every
            # instance, and most polls find it not ready.
            with self._sessions.begin() as session:
                study = session.get(Study, study_id)
                if study is None or not self._readiness(session, study, self._clock())[0].ready:
                    continue
            with self._sessions.begin() as session:
                study = session.get(Study, study_id, with_for_update=True)
                if study is None or study.state != StudyState.RECEIVING:
                    continue
                queued.extend(self._schedule_if_ready(session, study, self._clock()))
        return queued

    def _roles(self, session: Session, study: Study) -> tuple[list[Series], dict[str, RoleDecision],
                                                             dict[int, int]]:
        counts = dict(
            session.execute(
                select(Instance.series_id, func.count()).join(Series)
                .where(Series.study_id == study.id).group_by(Instance.series_id)
            ).all()
        )
        series_rows = list(session.scalars(select(Series).where(Series.study_id == study.id)))
        decisions = assign_roles(
            [series_attributes(s, counts.get(s.id, 0)) for s in series_rows], self._role_rules
        )
        return series_rows, decisions, counts

    def _readiness(self, session: Session, study: Study, now: datetime) -> tuple[
            Readiness, list[Series], dict[str, RoleDecision]]:
        series_rows, decisions, counts = self._roles(session, study)
        progress = [
            SeriesProgress(decisions[s.series_instance_uid].role, counts.get(s.id, 0),
                           s.attributes.get("expected_instances"))
            for s in series_rows
        ]
        ready = readiness(progress, study.first_received_at, study.last_received_at, now,
                          self._completeness, urgent=study.urgent)
        return ready, series_rows, decisions

    def _schedule_if_ready(self, session: Session, study: Study, now: datetime) -> list[int]:
        ready, series_rows, decisions = self._readiness(session, study, now)
        if not ready.ready:
            return []
        return self._schedule(session, study, now, series_rows, decisions, ready)

    def _schedule(
        self,
        session: Session,
        study: Study,
        now: datetime,
        series_rows: list[Series],
        decisions: dict[str, RoleDecision],
        ready: Readiness,
    ) -> list[int]:
        """Record series roles and queue a run of the active version (and of the shadow
        version, if any); returns the ids of the jobs queued."""
        model = registry.active_version(session)
        if model is None:  # it waits, and runs once an administrator activates a model
            if study.study_instance_uid not in self._waiting_for_model:
                self._waiting_for_model.add(study.study_instance_uid)
                logger.warning("study %s is ready but no model version is active; it waits",
                               study.study_instance_uid)
            return []
        self._waiting_for_model.discard(study.study_instance_uid)
        flair_roles_changed = False
        for s in series_rows:
            decision = decisions[s.series_instance_uid]
            if (s.role, s.role_reason) == (decision.role, decision.reason):
                continue
            flair_roles_changed |= s.role in FLAIR_ROLES or decision.role in FLAIR_ROLES
            s.role, s.role_reason = decision.role, decision.reason
            audit.record(
                session,
                "series.ignored" if decision.role is SeriesRole.IGNORED else "series.role",
                study_instance_uid=study.study_instance_uid,
                series_instance_uid=s.series_instance_uid,
                role=decision.role.value,
                reason=decision.reason,
            )
        if not any(d.role is SeriesRole.T2_FLAIR for d in decisions.values()):
            study.state = StudyState.NOT_PROCESSABLE
            audit.record(
                session, "study.not_processable", study_instance_uid=study.study_instance_uid,
                reason="no T2 FLAIR series",
            )
            return []

        study.state = StudyState.SCHEDULED
        flair_series_ids = [s.id for s in series_rows
                            if decisions[s.series_instance_uid].role in FLAIR_ROLES]
        runs = [(model, False)]
        shadow = registry.shadow_version(session)
        if shadow is not None and shadow.id != model.id:
            runs.append((shadow, True))
        queued = [self._queue_run(session, study, version, now, is_shadow, ready.reason,
                                  flair_series_ids, flair_roles_changed)
                  for version, is_shadow in runs]
        return [job_id for job_id in queued if job_id is not None]

    def _queue_run(
        self,
        session: Session,
        study: Study,
        model: ModelVersion,
        now: datetime,
        shadow: bool,
        why_ready: str,
        flair_series_ids: list[int],
        flair_roles_changed: bool,
    ) -> int | None:
        """Queue run n + 1 of ``model`` for ``study`` unless a run of it is still queued, or
        nothing it reads (the FLAIR series) changed since the last run."""
        label = f"{model.name} {model.version}"
        latest = session.scalar(
            select(Job).where(Job.study_id == study.id, Job.model_version_id == model.id)
            .order_by(Job.run.desc()).limit(1)
        )
        run, reason = 1, None
        if latest is not None:
            if latest.state == JobState.QUEUED:
                # Not started yet: it reads the study's instances when it runs, late ones too.
                audit.record(
                    session, "study.late_arrival", study_instance_uid=study.study_instance_uid,
                    job_id=latest.id, model_version=label,
                    reason="instances arrived before the queued run started; it includes them",
                )
                return None
            late = session.scalar(
                select(func.count()).select_from(Instance).join(Series)
                .where(Series.study_id == study.id, Instance.received_at > latest.created_at)
            )
            late_flair = session.scalar(
                select(func.count()).select_from(Instance)
                .where(Instance.series_id.in_(flair_series_ids),
                       Instance.received_at > latest.created_at)
            )
            if not late_flair and not flair_roles_changed:
                audit.record(
                    session, "study.late_arrival", study_instance_uid=study.study_instance_uid,
                    job_id=latest.id, model_version=label,
                    reason=f"{late} late instance(s), none in a FLAIR series; run "
                           f"{latest.run}'s results stand",
                )
                return None
            run = latest.run + 1
            reason = (f"late arrival: {late} instance(s) received after run {latest.run} "
                      f"was queued; run {run} supersedes its results")
        job = Job(
            study_id=study.id, model_version_id=model.id, run=run,
            priority=job_priority(study.urgent, shadow), shadow=shadow,
            supersedes_job_id=latest.id if latest else None,
            state=JobState.QUEUED, attempts=0, created_at=now,
        )
        session.add(job)
        session.flush()
        audit.record(
            session, "job.queued", study_instance_uid=study.study_instance_uid, job_id=job.id,
            model_version=label, run=run, priority=job.priority, shadow=shadow,
            supersedes_job_id=job.supersedes_job_id, reason=reason, completeness=why_ready,
        )
        self._metrics.jobs_queued.labels(shadow=str(shadow).lower()).inc()
        logger.info("queued %sjob %d (run %d, priority %d) for study %s with %s",
                    "shadow " if shadow else "", job.id, run, job.priority,
                    study.study_instance_uid, label)
        return job.id


def series_attributes(series: Series, instance_count: int) -> SeriesAttributes:
    """The classifier's view of an indexed series."""
    return series_attributes_from_json(series.series_instance_uid, series.series_number,
                                       series.series_description, instance_count, series.attributes)
