"""A soft time limit reaches only the job it was set for (worker/time_limits.py): the main process's
SIGUSR1 that arrives after the job ended — its timer was held up — no longer kills the idle child;
and one that interrupts a generation, wherever it lands, gives the question back to be tried again."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from types import FrameType

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from models import Message, Settings, Status
from worker import claims, tasks, time_limits
from worker.engine import builtin, tools
from worker.outcomes import Requeued
from worker.runtime import Runtime
from worker.time_limits import RUNNING, SOFT_LIMIT_SIGNAL

from .support import NO_QUOTAS, OneConnection, accept, hide_the_queue_of_other_tests


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


def test_a_soft_limit_that_lands_while_a_tool_statement_is_prepared_gives_the_question_back(
        soft_limit_handler, rolled_back, unit_settings: Settings) -> None:
    """The signal lands wherever the job is. Inside SQLAlchemy, while it prepares a todo tool's
    statement, SQLAlchemy raises a StatementError from it instead: tests/faults' partition scenario
    saw a question failed so, as a crash. Here the real signal is sent at exactly that moment (a
    profile hook sends it as SQLAlchemy starts preparing the tool's INSERT; the handler raises at
    the next bytecode, inside the preparation)."""
    hide_the_queue_of_other_tests(rolled_back)
    message_id = uuid.UUID(accept(rolled_back, "alice", "Add task: buy milk").body["message"]["id"])
    runtime = Runtime(settings=NO_QUOTAS, sessions=None, db=OneConnection(rolled_back),  # type: ignore[arg-type]
                      redis=redis.Redis.from_url(unit_settings.redis_url), engine=builtin.BuiltinEngine())
    claimed = claims.claim(runtime)
    assert isinstance(claimed, claims.Claimed) and claimed.question.id == message_id
    RUNNING.soft_limit, RUNNING.started = 2.0, time.monotonic() - 2.0  # the job has run out its limit

    signalled: list[str] = []

    def signal_while_preparing(frame: FrameType, event: str, _arg: object) -> None:
        compiled = frame.f_locals.get("compiled") if event == "call" else None
        if frame.f_code.co_name == "_init_compiled" and getattr(compiled, "statement", None) is tools.ADD:
            sys.setprofile(None)
            signalled.append(frame.f_code.co_name)
            os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)

    sys.setprofile(signal_while_preparing)
    try:
        settled = tasks._generate(runtime, claimed, None)
    finally:
        sys.setprofile(None)
    # Sent where it was meant to land (an upgrade that renamed SQLAlchemy's step would say so here).
    assert signalled == ["_init_compiled"], "SQLAlchemy no longer prepares a statement in _init_compiled"
    assert isinstance(settled, Requeued), settled
    row = rolled_back.execute(select(Message.status, Message.error).where(Message.id == message_id)).one()
    assert (row.status, row.error) == (Status.QUEUED, "the generation ran past its time limit")
