"""A soft time limit reaches only the job it was set for (worker/time_limits.py): the main process's
SIGUSR1 that arrives after the job ended — its timer was held up — no longer kills the idle child."""

from __future__ import annotations

import os
import signal
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from worker import time_limits
from worker.time_limits import RUNNING, SOFT_LIMIT_SIGNAL


@pytest.fixture
def soft_limit_handler():
    previous = signal.getsignal(SOFT_LIMIT_SIGNAL)
    signal.signal(SOFT_LIMIT_SIGNAL, time_limits._on_soft_limit)
    yield
    signal.signal(SOFT_LIMIT_SIGNAL, previous)
    RUNNING.started = RUNNING.soft_limit = None


def _signalled() -> None:
    os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)
    time.sleep(0.05)  # the handler runs in this thread, at the next bytecode


def test_a_late_soft_limit_at_an_idle_child_is_dropped(soft_limit_handler) -> None:
    RUNNING.started = None
    _signalled()  # no job: nothing raised


def test_a_late_soft_limit_does_not_reach_the_next_job(soft_limit_handler) -> None:
    RUNNING.soft_limit, RUNNING.started = 2.0, time.monotonic()  # a job that started just now
    _signalled()


def test_the_running_jobs_own_soft_limit_interrupts_it(soft_limit_handler) -> None:
    RUNNING.soft_limit, RUNNING.started = 2.0, time.monotonic() - 2.0
    with pytest.raises(SoftTimeLimitExceeded):
        _signalled()


def test_a_workers_jobs_tell_the_guard_when_they_start_and_end(soft_limit_handler) -> None:
    """`celery -A worker` loads worker/, whose app tells this guard of each job through Celery's
    own task signals: without them no job would ever own its soft limit."""
    from celery import signals

    from models.coordination.jobs import PING
    from worker import app, tasks  # noqa: F401 - importing tasks registers the jobs

    task = app.tasks[PING]
    signals.task_prerun.send(sender=task, task_id="unit", task=task, args=(), kwargs={})
    assert RUNNING.started is not None and RUNNING.soft_limit == app.conf.task_soft_time_limit
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is time_limits._on_soft_limit
    signals.task_postrun.send(sender=task, task_id="unit", task=task, args=(), kwargs={}, retval=None, state="SUCCESS")
    assert RUNNING.started is None
