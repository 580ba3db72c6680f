"""The count of round trips to Postgres that web and worker processes keep, one metric labelled by
process kind (bench/ reads it from their /metrics). Import this only after
models.process.metrics_support.prepare_multiprocess_dir has run — web.metrics and worker.metrics do — since
prometheus-client settles a metric's storage when the metric is made."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter

SQL_ROUND_TRIPS = Counter("chatq_sql_round_trips_total", "Round trips to Postgres.", ["process", "kind"])


def counter_for(process: str) -> Callable[[str], None]:
    """An `on_round_trip` for models.sql.db.make_engine that counts under `process` ("web", "worker")."""

    def count(kind: str) -> None:
        SQL_ROUND_TRIPS.labels(process, kind).inc()

    return count
