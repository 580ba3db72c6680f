"""Prometheus plumbing both process kinds share. prometheus-client's multiprocess mode needs
PROMETHEUS_MULTIPROC_DIR set before it is first imported, so `prepare_multiprocess_dir` runs in the
parent process (gunicorn's config, Celery's worker_init) and metric modules are imported after it.
The directory holds counters only — never user data — and is made fresh for each process group."""

from __future__ import annotations

import os
import sys
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(prefix: str) -> str:
    if not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix=f"chatq-{prefix}-metrics-")
        values = sys.modules.get("prometheus_client.values")
        if values is not None:
            # Already imported, in single-process mode (the `celery` command loads Flower's plugin,
            # which imports prometheus-client, before our code runs): metrics made from now on must
            # write to the directory too.
            values.ValueClass = values.get_value_class()
    return os.environ[ENV]


def scrape_registry():  # -> prometheus_client.CollectorRegistry
    """A registry that adds up the counters of every process in the group (or, in a single process
    started without the directory, such as `flask run`, that process's own)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get(ENV):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry
