"""Prometheus metrics of one node process, plus gauges read from the shared database at
scrape time (jobs by state, queue depth, model versions), so every process reports the same
queue whichever one is scraped.

Counters and histograms are per process; Prometheus sums them over the scraped pods.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select

from node.db.engine import SessionFactory
from node.db.tables import Delivery, Job, ModelVersion, utcnow
from node.domain.jobs import JobState

logger = logging.getLogger(__name__)

# Seconds: inference of a study takes 1-30 s on CPU; end to end adds the quiet period.
_INFERENCE_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, float("inf"))
_END_TO_END_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, float("inf"))


class NodeMetrics:
    """The instruments the services update. One registry per node (tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.associations = Counter(
            "lacuna_associations", "DICOM associations requested, by outcome",
            ["outcome"], registry=r)
        self.instances_received = Counter(
            "lacuna_instances_received", "Instances stored and answered with success "
            "(duplicate: an identical re-send)", ["duplicate"], registry=r)
        self.bytes_received = Counter(
            "lacuna_received_bytes", "Bytes of instances stored", registry=r)
        self.rejections = Counter(
            "lacuna_instance_rejections", "Instances refused with a failure status, by reason",
            ["reason"], registry=r)
        self.jobs_queued = Counter(
            "lacuna_jobs_queued", "Jobs queued for stable studies (shadow: candidate model)",
            ["shadow"], registry=r)
        self.jobs_finished = Counter(
            "lacuna_jobs_finished", "Job attempts ended, by resulting state", ["state"],
            registry=r)
        self.inference_seconds = Histogram(
            "lacuna_inference_seconds", "Model inference time per study",
            buckets=_INFERENCE_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram(
            "lacuna_end_to_end_seconds",
            "From the last instance of a study received to its results delivered",
            buckets=_END_TO_END_BUCKETS, registry=r)
        self.deliveries = Counter(
            "lacuna_deliveries", "Result objects delivered, by destination", ["destination"],
            registry=r)
        self.delivery_failures = Counter(
            "lacuna_delivery_failures", "Result object deliveries that failed, by destination",
            ["destination"], registry=r)

    def watch_database(self, sessions: SessionFactory) -> None:
        self.registry.register(DatabaseCollector(sessions))


class DatabaseCollector(Collector):
    """Queue and model gauges from the database; ``lacuna_database_up`` 0 when it fails."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def describe(self) -> list[Metric]:
        return []  # collected lazily: no database query at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lacuna_database_up", "1 when the database answered the scrape")
        try:
            with self._sessions.begin() as session:
                by_state = dict(session.execute(
                    select(Job.state, func.count()).group_by(Job.state)).all())
                now = utcnow()
                depth = session.scalar(
                    select(func.count()).select_from(Job).where(
                        Job.state == JobState.QUEUED,
                        or_(Job.not_before.is_(None), Job.not_before <= now)))
                overdue = session.scalar(
                    select(func.count()).select_from(Job).where(
                        and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)))
                deliveries = session.execute(
                    select(Delivery.destination, Delivery.state, func.count())
                    .group_by(Delivery.destination, Delivery.state)).all()
                versions = session.execute(
                    select(ModelVersion.name, ModelVersion.version, ModelVersion.active,
                           ModelVersion.shadow)
                    .where(or_(ModelVersion.active.is_(True), ModelVersion.shadow.is_(True)))
                ).all()
        except Exception:  # a scrape must answer even when the database does not
            logger.exception("metrics: database query failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("lacuna_jobs", "Jobs in the database by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily("lacuna_queue_depth", "Queued jobs that are due now",
                                value=depth or 0)
        yield GaugeMetricFamily("lacuna_jobs_lease_expired",
                                "Running jobs whose worker stopped renewing (to be taken over)",
                                value=overdue or 0)
        queue = GaugeMetricFamily(
            "lacuna_deliveries", "Result deliveries by destination and state (dead: needs "
            "`lacuna deliveries retry`)", labels=["destination", "state"])
        for destination, delivery_state, count in deliveries:
            queue.add_metric([destination, delivery_state], count)
        yield queue
        model = GaugeMetricFamily("lacuna_model_version", "Registered model versions in use",
                                  labels=["name", "version", "role"])
        for name, version, active, _shadow in versions:
            model.add_metric([name, version, "active" if active else "shadow"], 1)
        yield model
