"""Who answers what, decided in Postgres.

A job is a doorbell: it says that some message may start, not which. The worker that takes it
claims the message that should start next by the fair order (worker/claim_sql.py,
docs/scheduler.md) — with its *conversation's* lease: a conditional UPDATE that succeeds only when no
live lease exists, and bumps `lease_version`, the fencing token. Holding it, the worker marks the
message `processing`, generates outside any transaction, and commits the reply only if
`lease_version` is still its own (checked by the same UPDATE that numbers the reply). So:

- no two workers generate for one conversation at once, and replies come in `seq` order;
- a worker that lost its lease (it stalled, or was presumed dead) discards its reply;
- the unique `reply_to_id` makes a second reply to one message impossible even so.

- which message starts is decided by Postgres, the same way on every worker.

Each step is one statement (worker/claim_sql.py): on the happy path a message costs the worker
three round trips to Postgres — the claim (with the history), the engine's tool calls, the commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import structlog
from sqlalchemy import Connection, CursorResult, text
from sqlalchemy.exc import IntegrityError

from models import Finish, Lane, Message, Role, Status
from models.representation import message_json

from . import claim_sql
from .engine import History, Reply
from .outcomes import Cancelled, Failed, LeaseLost, Requeued, Settled, Superseded
from .runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Lease:
    conversation_id: uuid.UUID
    version: int
    last_seq: int  # the conversation's last seq when claimed
    others_pending: int  # unanswered messages besides the one claimed, when claimed


@dataclass(frozen=True)
class Question:
    """A message claimed for answering, with what its reply is generated from."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    user: str
    seq: int
    content: str
    attempt: int
    request_id: str | None
    history: History
    waited_seconds: float  # from acceptance to this claim
    last_error: str | None = None  # why the previous attempt did not answer, if one did not
    lane: Lane = Lane.INTERACTIVE
    weight: float = 1.0  # its user's, in the scheduler (the token's tier)
    options: dict[str, Any] | None = None  # what a /v1/responses call asked of the answer
    tool_outputs: list[dict[str, Any]] | None = None  # the outputs of the app's function calls it answers


@dataclass(frozen=True)
class Claimed:
    """A question to answer, under its conversation's lease."""

    lease: Lease
    question: Question
    gave_up: list[uuid.UUID]  # the conversation's messages failed for good on the way (too many attempts, too old)


@dataclass(frozen=True)
class NothingClaimed:
    """No question to answer: none could start (`conversation_id` None), or the conversation
    claimed had none left — each was given up on the way (`gave_up`) or cancelled meanwhile — and
    its lease is released."""

    conversation_id: uuid.UUID | None = None
    gave_up: list[uuid.UUID] = field(default_factory=list)


def claim(runtime: Runtime) -> Claimed | NothingClaimed:
    """Take the message that should start next, with its conversation's lease."""
    cap = runtime.settings.max_generations_per_user
    with runtime.db.connect() as connection:
        claimed, content, history = _claimed(_run_claim(connection, cap, runtime.settings.lease_seconds))
        if claimed is None:
            return NothingClaimed()
        lease = Lease(uuid.UUID(claimed["conversation_id"]), claimed["lease_version"], claimed["last_seq"],
                      max(0, claimed["pending"] - 1))
        gave_up: list[uuid.UUID] = []
        question = _question(lease, claimed, content, history)
        while question is not None:
            reason = _give_up_reason(question, runtime)
            if reason is None:
                return Claimed(lease, question, gave_up)
            connection.execute(claim_sql.GIVE_UP, {"question_id": question.id, "reason": reason})
            gave_up.append(question.id)
            claimed, content, history = _claimed(connection.execute(
                claim_sql.PICK, {"conversation": lease.conversation_id, "version": lease.version}))
            question = _question(lease, claimed, content, history) if claimed is not None else None
        connection.execute(claim_sql.RELEASE,
                           {"conversation": lease.conversation_id, "version": lease.version})
        return NothingClaimed(lease.conversation_id, gave_up)


# "A capped claim is running": the key of a session-level advisory lock (worker/claim_sql.py's
# other keys are the sweeper's and the webhooks').
CAPPED_CLAIM_LOCK = 7_362_203


def _run_claim(connection: Connection, cap: int, lease_seconds: float) -> CursorResult[Any]:
    """The claim statement. Under MAX_GENERATIONS_PER_USER it counts the user's running generations
    in its own snapshot, so two claims at once would both see room for the same user (CI saw a
    user at a cap of 1 generate twice for 0.8 s): capped claims take turns. The lock is taken
    before the statement and let go after it has committed (autocommit), so the next claim's
    statement starts later and sees this one's generation. Uncapped claims never wait for it."""
    parameters = {"lease": lease_seconds, "max_generations": cap}
    if cap <= 0:
        return connection.execute(claim_sql.CLAIM[False], parameters)
    connection.execute(_LOCK, {"key": CAPPED_CLAIM_LOCK})
    try:
        # Its rows are already on this side (a client-side cursor) when the unlock runs.
        return connection.execute(claim_sql.CLAIM[True], parameters)
    finally:
        connection.execute(_UNLOCK, {"key": CAPPED_CLAIM_LOCK})


_LOCK = text("SELECT pg_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
_SEQ = itemgetter(0)


def _claimed(result: CursorResult[Any]) -> tuple[dict[str, Any] | None, str | None, History]:
    """From the rows of CLAIM or PICK (claim_sql._question_with_history says their shape: seq, role,
    content, tool_calls, claim): the claim's details as the statement wrote them (None: nothing
    claimed), the question's text, and the history in seq order."""
    # The driver's own tuples, not SQLAlchemy's Row objects, which a long history pays for once per
    # message (bench/claim_fetch.py; its figures are in BENCHMARKS.md); the rows' shape is said above.
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    rows.sort(key=_SEQ)  # the claim's row (seq 0) first
    if not rows:
        return None, None, History([])
    _zero, _role, content, _calls, claimed = rows[0]
    if claimed is None:
        return None, None, History([])
    return claimed, content, History(rows[1:])


def _question(lease: Lease, claimed: dict[str, Any], content: str | None, history: History) -> Question | None:
    """The question the claim picked (None: nothing was left to answer)."""
    if not claimed["question_id"] or content is None:
        return None
    return Question(
        id=uuid.UUID(claimed["question_id"]),
        conversation_id=lease.conversation_id,
        user=claimed["user_id"],
        seq=claimed["seq"],
        content=content,
        attempt=claimed["attempts"] or 0,
        request_id=claimed["request_id"],
        history=history,
        waited_seconds=claimed["age"] or 0.0,
        last_error=claimed.get("last_error"),
        lane=Lane(claimed.get("lane") or 0),
        weight=claimed.get("weight") or 1.0,
        options=claimed.get("options"),
        tool_outputs=claimed.get("tool_outputs"),
    )


def _give_up_reason(question: Question, runtime: Runtime) -> str | None:
    tried = question.attempt - 1  # the claim just counted this attempt
    if tried >= runtime.settings.max_attempts:
        cause = f" (the last one: {question.last_error})" if question.last_error else ""
        return f"Not answered after {tried} attempts{cause}; retry the message to try again."
    # Only a message whose earlier attempts failed is given up for its age: one that merely waited
    # its turn (a backlog, the batch lane) is not; how long a message may wait is its expires_in.
    if tried > 0 and question.waited_seconds > runtime.settings.answer_deadline_seconds:
        return f"Not answered within {int(runtime.settings.answer_deadline_seconds)} seconds; retry the message."
    return None


@dataclass(frozen=True)
class Committed:
    # What the question is now: answered, cancelled, or None (a regenerate put it back meanwhile).
    status: Status | None
    seq: int | None  # the reply's, None when none was stored
    latency_seconds: float  # from the question's acceptance to this commit
    check_next: bool  # another message may be waiting in this conversation
    # The answered question as the API shows it, from what the commit wrote and returned: its
    # long-polls are answered with it, without reading it again (None unless answered).
    message: dict[str, Any] | None = None


def commit_reply(runtime: Runtime, lease: Lease, question: Question, reply: Reply) -> Committed | None:
    """Store the reply and settle the question (answered, or cancelled with the text so far), if
    the lease is still ours, releasing it. None when the lease was lost and the reply discarded."""
    parameters = {
        "conversation": lease.conversation_id,
        "version": lease.version,
        "reply_id": uuid.uuid4(),
        "question_id": question.id,
        # PostgreSQL text cannot hold NUL, which a model may produce: drop it.
        "reply_content": _without_nul(reply.content),
        "reply_tool_calls": _without_nul(reply.tool_calls),
        "reply_context_seq": question.history[-1].seq if question.history else 0,
        "reply_request_id": question.request_id,
        "reply_question_content": _without_nul(question.content),
        "reply_finish": reply.finish,
        "reply_usage": reply.usage,
        "reply_context": reply.context,
        "reply_model": reply.model,
        "reply_pieces": reply.pieces,
        "prompt_tokens": (reply.usage or {}).get("prompt_tokens", 0),
        "completion_tokens": (reply.usage or {}).get("completion_tokens", 0),
    }
    try:
        with runtime.db.connect() as connection:
            row = connection.execute(claim_sql.COMMIT_REPLY, parameters).one_or_none()
    except IntegrityError:  # unreachable while the fence holds; the constraint is the backstop
        log.error("duplicate_reply_suppressed", message_id=str(question.id))
        return None
    if row is None:
        return None
    if row.status is not Status.ANSWERED or row.seq is None:
        # Cancelled (an interrupting message may be waiting) or put back: look for what is next.
        return Committed(row.status, row.seq, row.latency or 0.0, check_next=True)
    # The reply took seq last_seq + 1 unless messages were numbered since the claim: then one may
    # wait for us. (A message numbered after this commit finds the lease free on its own.)
    arrived_since_claim = row.seq - 1 > lease.last_seq
    return Committed(row.status, row.seq, row.latency, check_next=lease.others_pending > 0 or arrived_since_claim,
                     message=_answered_message(lease, question, reply, parameters, row))


def _answered_message(lease: Lease, question: Question, reply: Reply, parameters: dict[str, Any],
                      row: Any) -> dict[str, Any]:
    """The question and its new reply as `GET /messages/{id}` shows them right after this commit:
    the rows as written (parameters) with what Postgres made of them (seqs, times, the content)."""
    asked = Message(id=question.id, conversation_id=lease.conversation_id, seq=row.question_seq, role=Role.USER,
                    content=row.question_content, created_at=row.question_created_at, error=None,
                    status=Status.ANSWERED, attempts=question.attempt)
    answer = Message(id=parameters["reply_id"], conversation_id=lease.conversation_id, seq=row.seq,
                     role=Role.ASSISTANT, content=parameters["reply_content"], created_at=row.reply_created_at,
                     error=None, reply_to_id=question.id, tool_calls=parameters["reply_tool_calls"],
                     finish=Finish(reply.finish), usage=reply.usage, context=reply.context, model=reply.model,
                     superseded=False)
    return message_json(asked, answer)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def finish_unanswered(runtime: Runtime, claimed: Claimed, *, failed: bool, error: str,
                      retry_in: float = 0.0) -> Settled:
    """Give the message back: `queued` again, to be tried after `retry_in` seconds, keeping why this
    attempt did not answer (a person reads it while it waits, and in the give-up reason if every
    attempt fails), or `failed` with a readable error. Releases the lease if it is still ours.
    What became of it: Requeued or Failed; Cancelled (the user stopped it meanwhile), Superseded (a
    regenerate put it back meanwhile: left as it is) or LeaseLost (someone else holds the
    conversation now: left to them)."""
    lease, question = claimed.lease, claimed.question
    with runtime.db.connect() as connection:
        row = connection.execute(claim_sql.GIVE_BACK, {
            "conversation": lease.conversation_id, "version": lease.version,
            "given_back_as": Status.FAILED if failed else Status.QUEUED, "reason": error, "question_id": question.id,
            "retry_in": retry_in}).one_or_none()
    if row is None:
        return LeaseLost(claimed)
    match row.given_back:
        case None:
            return Superseded(claimed)
        case Status.QUEUED.value:
            return Requeued(claimed, retry_in)
        case Status.FAILED.value:
            return Failed(claimed)
        case _:
            return Cancelled(claimed)


def next_pending(runtime: Runtime, conversation_id: uuid.UUID) -> uuid.UUID | None:
    """The conversation's earliest unanswered message, marked as enqueued now."""
    with runtime.db.connect() as connection:
        return connection.execute(claim_sql.NEXT_PENDING, {"conversation": conversation_id}).scalar_one_or_none()
