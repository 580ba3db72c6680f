"""Prometheus metrics of the web process, served at /metrics (all gunicorn workers added up),
with the queue's depth read from Postgres at scrape time."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from models import Message, Status
from models.coordination.queue_figures import busiest_users
from models.process.metrics_support import scrape_registry
from models.sql.round_trips import counter_for
from models.tables.entities import status_in

from .services import services
from .spec import operation

bp = Blueprint("metrics", __name__)

REQUEST_SECONDS = Histogram(
    "chatq_http_request_duration_seconds", "Time to answer an HTTP request.", ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
count_round_trip = counter_for("web")
WAITING = Gauge("chatq_waiting_requests", "Long-polls and event streams this node holds now.",
                multiprocess_mode="livesum")
WAITS_REFUSED = Counter("chatq_waits_refused_total", "Waiting requests refused at admission.", ["reason"])
EXPORTING = Gauge("chatq_exports_streaming", "Exports this node streams now (each holds a database connection).",
                  multiprocess_mode="livesum")
EXPORTS_REFUSED = Counter("chatq_exports_refused_total", "Exports refused at admission.", ["reason"])
SEARCHING = Gauge("chatq_searches_running", "Searches this node runs now (each holds a database connection).",
                  multiprocess_mode="livesum")
SEARCHES_REFUSED = Counter("chatq_searches_refused_total", "Searches refused at admission.", ["reason"])
# Labels take known values only: a client choosing the method (or path) must not be able to grow
# the metrics without bound (a series per invented method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class QueueDepth:
    """queued and processing messages, how long the oldest queued one has waited and how many users
    have work pending, read from Postgres when scraped (what workers are autoscaled on: deploy/k8s,
    KEDA's ScaledObject); and the busiest users' recent starts, from Redis."""

    def collect(self):
        gauge = GaugeMetricFamily("chatq_messages", "User messages waiting for a reply.", labels=["status"])
        with services().sessions() as session:
            counts = dict(session.execute(
                select(Message.status, func.count()).where(status_in(Message.status, Status.QUEUED, Status.PROCESSING))
                .group_by(Message.status)
            ).all())
            waited = func.extract("epoch", func.now() - func.min(Message.created_at))
            oldest = session.scalar(select(func.coalesce(waited, 0)).where(status_in(Message.status, Status.QUEUED)))
            users = session.scalar(select(func.count(func.distinct(Message.user_id)))
                                   .where(status_in(Message.status, Status.QUEUED, Status.PROCESSING)))
        for status in (Status.QUEUED, Status.PROCESSING):
            gauge.add_metric([status.value], counts.get(status, 0))
        yield gauge
        yield GaugeMetricFamily("chatq_users_with_pending_work",
                                "Users with a message queued or being answered: the scheduler shares the workers among "
                                "them.", value=float(users or 0))
        busiest = GaugeMetricFamily("chatq_busiest_users_starts",
                                    "Generations the busiest users started over the last minute, by rank (1: the "
                                    "busiest; no user is named).", labels=["rank"])
        for rank, starts in enumerate(busiest_users(services().redis), start=1):
            busiest.add_metric([str(rank)], starts)
        yield busiest
        yield GaugeMetricFamily("chatq_oldest_queued_seconds",
                                "How long the oldest queued message has waited since it was accepted (0: none).",
                                value=float(oldest or 0))


@bp.get("/metrics")
@operation("Prometheus metrics of this web node", responses={200: "text/plain"}, authenticated=False)
def metrics() -> Response:
    registry = CollectorRegistry()
    registry.register(scrape_registry())  # every process of this node's group, added up
    registry.register(QueueDepth())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    @app.before_request
    def _start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        if "started" in g and request.endpoint != "metrics.metrics":
            route = request.url_rule.rule if request.url_rule else "unmatched"
            method = request.method if request.method in METHODS else "other"
            REQUEST_SECONDS.labels(route, method, str(response.status_code)).observe(
                time.perf_counter() - g.started)
        return response
