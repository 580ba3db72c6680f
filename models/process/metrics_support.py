"""Prometheus plumbing both process kinds share. prometheus-client's multiprocess mode needs
PROMETHEUS_MULTIPROC_DIR set before it is first imported, so `prepare_multiprocess_dir` runs in the
parent process (gunicorn's config, Celery's worker_init) and metric modules are imported after it.
The directory holds counters only — never user data — and is made fresh for each process group,
under one folder per host (`chatq-metrics/<kind>-<pid>` in the temporary directory): the process
that made it removes it when it exits, and a process group that was killed (SIGKILL, a crash)
leaves one that the next process to start removes. A host that restarts processes all day does not
fill its disk. (Or name a directory of your own: PROMETHEUS_MULTIPROC_DIR, which is then left as
it is.)"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil

ENV = "PROMETHEUS_MULTIPROC_DIR"
FOLDER = Path(tempfile.gettempdir()) / "chatq-metrics"


def prepare_multiprocess_dir(prefix: str) -> str:
    if not os.environ.get(ENV):
        FOLDER.mkdir(exist_ok=True)
        _remove_orphans()
        own = FOLDER / f"{prefix}-{os.getpid()}"
        shutil.rmtree(own, ignore_errors=True)  # a dead process's, whose pid this one now has
        own.mkdir()
        atexit.register(_remove_own, own, os.getpid())
        os.environ[ENV] = str(own)
        values = sys.modules.get("prometheus_client.values")
        if values is not None:
            # Already imported, in single-process mode (the `celery` command loads Flower's plugin,
            # which imports prometheus-client, before our code runs): metrics made from now on must
            # write to the directory too.
            values.ValueClass = values.get_value_class()
    return os.environ[ENV]


def _remove_own(folder: Path, maker: int) -> None:
    # Forked children (gunicorn's workers, Celery's pool) inherit this hook: only the maker removes.
    if os.getpid() == maker:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_orphans() -> None:
    """The folders of process groups whose maker is gone."""
    for folder in FOLDER.iterdir():
        _kind, _, pid = folder.name.rpartition("-")
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


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
