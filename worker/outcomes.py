"""What a job did: one type per outcome, carrying what its follow-up needs and nothing else.
`outcome` names it in the logs and in the job's result (Flower). The claim's functions return
them (worker/claims.py), the task body matches on them (worker/tasks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .claims import Claimed, Committed, NothingClaimed

class Deferred:
    """No model server had a free slot in time: the doorbell went back to the queue."""

    outcome = "deferred"


@dataclass(frozen=True)
class NothingToDo:
    """No message could start now: each is answered, its conversation busy, or it waits out a
    backoff (the claim may have given some up on the way)."""

    nothing: NothingClaimed
    outcome: ClassVar[str] = "nothing_to_do"


@dataclass(frozen=True)
class Settled:
    """What became of the question this job claimed."""

    claimed: Claimed
    outcome: ClassVar[str]


@dataclass(frozen=True)
class Answered(Settled):
    committed: Committed
    outcome: ClassVar[str] = "answered"


class Cancelled(Settled):
    """Stopped by the user: the text written so far stored as its reply (when there was any)."""

    outcome = "cancelled"


@dataclass(frozen=True)
class Requeued(Settled):
    """Given back to the queue, to be tried again after `retry_in` seconds."""

    retry_in: float
    outcome: ClassVar[str] = "requeued"


class Failed(Settled):
    outcome = "failed"


class Superseded(Settled):
    """Put back in the queue while generated (a regenerate): nothing stored."""

    outcome = "superseded"


class LeaseLost(Settled):
    """Another worker took the conversation over: nothing stored, and it tells the clients."""

    outcome = "lease_lost"


Done = Deferred | NothingToDo | Settled
