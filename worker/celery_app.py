"""The Celery app `celery -A worker` finds. Task defaults are chosen here, once, with reasons."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import structlog
from celery import Celery, Task, bootsteps, signals
from kombu import Exchange, Queue

from models import Settings
from models.coordination import broker
from models.coordination.jobs import DELIVER_WEBHOOK, ERASE_USER, FORGET, HOUSEKEEPING_QUEUE, SWEEP, WEBHOOK_QUEUE
from models.process.connections import BROKER_TRANSPORT_OPTIONS, broker_options, broker_url
from models.process.logs import configure_logging
from models.process.metrics_support import scrape_registry

from . import time_limits


def create_celery(settings: Settings) -> Celery:
    settings.require_engine()  # refuse to start a worker that could answer nothing
    app = Celery("chatq", broker=broker_url(settings), include=["worker.tasks"])
    time_limit = settings.task_time_limit
    app.conf.update(
        # Results live in Postgres; Celery's result backend would only be a second, weaker copy.
        task_ignore_result=True,
        # Acknowledge a job after it ran, not when it was received: a worker that dies mid-reply
        # leaves its job to be delivered again ...
        task_acks_late=True,
        # ... including when the pool child is SIGKILLed (by default Celery acks those).
        task_reject_on_worker_lost=True,
        # One job at a time per process: a prefetched job would wait behind a slow one, and may
        # outlive the visibility timeout and be delivered twice.
        worker_prefetch_multiplier=1,
        # A generation that hangs is killed (for the built-in engine, before its lease runs out; a
        # model's generation renews its lease); the fencing token makes a late reply harmless
        # anyway. Soft limit first, so the message is given back to the queue.
        task_time_limit=time_limit,
        task_soft_time_limit=time_limit * 0.8,
        # Unacked jobs come back after this; it must exceed the longest job (the time limit).
        broker_transport_options={"visibility_timeout": max(300, int(time_limit * 4)), **BROKER_TRANSPORT_OPTIONS,
                                  **broker_options(settings)},
        broker_connection_retry_on_startup=True,
        # Flower shows each job as it is sent, received, started and finished.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        # Webhook deliveries wait on other people's servers: workers of their own run them
        # (`celery -A worker worker -Q webhooks`), and the default workers never see them (the job
        # is sent to that queue by models/coordination/messaging.py; this route says the same to anyone else).
        # Beat's rounds and erasures go to the housekeeping queue, which a worker started without -Q consumes
        # beside the answer jobs' (task_queues). kombu's Redis consumer pops from its queues in
        # turn, so a round starts at a worker's next free slot; in the answer jobs' queue it waited
        # behind every doorbell already there, and under a backlog a dead worker's lease or an
        # aged batch message waited for the whole backlog to drain.
        task_routes={DELIVER_WEBHOOK: {"queue": WEBHOOK_QUEUE},
                     SWEEP: {"queue": HOUSEKEEPING_QUEUE}, FORGET: {"queue": HOUSEKEEPING_QUEUE},
                     ERASE_USER: {"queue": HOUSEKEEPING_QUEUE}},
        task_queues=[_queue(app.conf.task_default_queue), _queue(HOUSEKEEPING_QUEUE)],
        # The sweeper puts back what Redis lost or a dead worker dropped (see worker/sweeper.py).
        # ... and the forget round deletes what retention says is due (worker/forget.py).
        beat_schedule={"sweep": {"task": SWEEP, "schedule": settings.sweep_interval_seconds},
                       "forget": {"task": FORGET, "schedule": settings.forget_interval_seconds}},
        # beat's last-run times only; losing the file loses nothing (the schedule is an interval).
        beat_schedule_filename=str(Path(tempfile.gettempdir()) / "chatq-celerybeat-schedule"),
    )
    # kombu's Redis transport, its subscription reads bounded (models/coordination/broker.py).
    app.conf.broker_transport = (broker.WORKER_SENTINEL_TRANSPORT if settings.redis_sentinels
                                 else broker.WORKER_TRANSPORT)
    app.steps["worker"].add(Heartbeat)
    return app


def _queue(name: str) -> Queue:
    """The queue Celery would make for `name` by itself (a direct exchange of that name): what the
    web's jobs, sent without declaring anything, are routed to."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


HEARTBEAT_SECONDS = 10.0


class Heartbeat(bootsteps.StartStopStep):
    """Touches WORKER_HEARTBEAT_FILE every HEARTBEAT_SECONDS from the worker's own timer, which its
    event loop drives: a liveness probe that reads the file's age sees a stuck worker, and one that
    cannot work — the loop does not run while the consumer reconnects to its broker (tests/faults,
    the partition scenario). It costs no broker round trip (`celery inspect ping` costs one per
    probe per pod)."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: object, **kwargs: object) -> None:
        super().__init__(worker, **kwargs)
        self.path = Path(Settings.from_env().worker_heartbeat_file or os.devnull)
        self.enabled = self.path != Path(os.devnull)
        self.timer_ref: object | None = None

    def start(self, worker) -> None:
        if self.enabled:
            self._touch()
            self.timer_ref = worker.timer.call_repeatedly(HEARTBEAT_SECONDS, self._touch)

    def stop(self, worker) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()  # type: ignore[attr-defined]
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def _touch(self) -> None:
        self.path.touch()


@signals.setup_logging.connect
def _structured_logging(**_kwargs: object) -> None:
    configure_logging()


@signals.worker_ready.connect
def _serve_metrics(**_kwargs: object) -> None:
    settings = Settings.from_env()
    if not settings.worker_metrics_port:
        return
    port = settings.worker_metrics_port
    from prometheus_client import start_http_server

    try:
        # Where web listens: every interface for Prometheus, loopback only in dev mode.
        start_http_server(port, addr=settings.bind_host, registry=scrape_registry())
    except OSError as error:  # another worker on this host has the port: its metrics still serve
        structlog.get_logger(__name__).warning("metrics_port_taken", port=port, error=str(error))


@signals.worker_shutting_down.connect
def _tell_pool(**_kwargs: object) -> None:
    from .shutdown import tell_children

    tell_children()


@signals.task_prerun.connect
def _job_started(task: Task | None = None, **_kwargs: object) -> None:
    time_limits.job_started(task)  # a soft time limit reaches only the job it was set for


@signals.task_postrun.connect
def _job_ended(**_kwargs: object) -> None:
    time_limits.job_ended()


@signals.worker_process_shutdown.connect
def _forget_process(pid: int | None = None, **_kwargs: object) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
