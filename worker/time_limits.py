"""A soft time limit reaches only the job it was set for.

Celery's main process times each job on its event loop and, when the soft limit passes, sends the
pool child SIGUSR1, whose handler (billiard's) raises SoftTimeLimitExceeded wherever the child is.
When that loop was held up — in a partition every call on a dead connection waits out its timeout —
the limit fires late, after the job has ended, and the exception hits a child that is waiting for
its next job: it dies of it (tests/faults, the partition scenario). Here a child raises only while a
job runs and has run about as long as its limit; a late signal for a job that already ended is
dropped. worker/celery_app.py tells it, from Celery's task signals, when a job starts and ends.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

SOFT_LIMIT_SIGNAL = signal.SIGUSR1  # billiard's

# A signal is the running job's when the job has run this share of its soft limit: the main process
# starts timing when it hands the job over, a moment before the child starts it.
OWN_SHARE = 0.9


class RunningJob:
    """When this pool child's current job started and its soft limit (a lifecycle fact of the
    process, not user data). Written by task signals, read by a signal handler: no lock, as in
    worker/shutdown.py."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.soft_limit: float | None = None

    def owns_soft_limit(self) -> bool:
        started, limit = self.started, self.soft_limit
        return started is not None and (not limit or time.monotonic() - started >= limit * OWN_SHARE)


RUNNING = RunningJob()


def _on_soft_limit(signum: int, frame: FrameType | None) -> None:
    if RUNNING.owns_soft_limit():
        raise SoftTimeLimitExceeded()
    # No logging here: the signal may interrupt code that holds the logging module's locks.


def ran_out(error: BaseException) -> bool:
    """Whether `error` is a soft time limit: SoftTimeLimitExceeded itself, or an exception it caused.
    The signal lands wherever the job is; when that is inside SQLAlchemy while it prepares a
    statement (a todo tool's, say), SQLAlchemy raises a StatementError from it instead, which
    tests/faults saw fail a question as a crash that should have been tried again."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, SoftTimeLimitExceeded):
            return True
        cause = cause.__cause__
    return False


def job_started(task: Task | None) -> None:
    """In the pool process, as a job starts (task_prerun, worker/celery_app.py)."""
    RUNNING.soft_limit = (task.soft_time_limit or task.app.conf.task_soft_time_limit) if task else None
    RUNNING.started = time.monotonic()
    # billiard installs its handler after Celery's per-process initialisation, so ours goes in here.
    if signal.getsignal(SOFT_LIMIT_SIGNAL) is not _on_soft_limit:
        signal.signal(SOFT_LIMIT_SIGNAL, _on_soft_limit)


def job_ended() -> None:
    """In the pool process, as a job ends (task_postrun)."""
    RUNNING.started = None
