"""Who answers what, decided in Postgres.

A worker claims a *conversation* with a lease: a conditional UPDATE that succeeds only when no
live lease exists, and bumps `lease_version`, the fencing token. Holding it, the worker marks the
conversation's earliest unanswered message `processing`, generates outside any transaction, and
commits the reply only if `lease_version` is still its own (checked under the row lock). So:

- no two workers generate for one conversation at once, and replies come in `seq` order;
- a worker that lost its lease (it stalled, or was presumed dead) discards its reply;
- the unique `reply_to_id` makes a second reply to one message impossible even so.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models import PENDING, Conversation, Message, Role, Status
from models.queries import history_for

from .engine import Reply, Turn
from .runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Lease:
    conversation_id: uuid.UUID
    version: int


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
    history: list[Turn]
    waited_seconds: float  # from acceptance to this claim


def pending_conversation(rt: Runtime, message_id: uuid.UUID) -> uuid.UUID | None:
    """The conversation of a message that still needs an answer; None makes the job a no-op."""
    with rt.sessions.begin() as session:
        row = session.execute(
            select(Message.conversation_id, Message.status).where(Message.id == message_id)
        ).first()
    if row is None or row.status not in PENDING:
        return None
    return row.conversation_id


def claim(rt: Runtime, conversation_id: uuid.UUID) -> tuple[Lease | None, Question | None, list[uuid.UUID]]:
    """Take the conversation's lease and its earliest unanswered message.

    Returns (lease, question, failed_ids). No lease: another worker holds a live one and will
    carry on with this conversation. A lease but no question: nothing left to answer (the lease
    is already released). Messages past their attempts or deadline are failed on the way.
    """
    settings = rt.settings
    lease_for = timedelta(seconds=settings.lease_seconds)
    failed: list[uuid.UUID] = []
    with rt.sessions.begin() as session:
        version = session.execute(
            update(Conversation)
            .where(
                Conversation.id == conversation_id,
                (Conversation.lease_expires_at.is_(None)) | (Conversation.lease_expires_at < func.now()),
            )
            .values(lease_version=Conversation.lease_version + 1, lease_expires_at=func.now() + lease_for)
            .returning(Conversation.lease_version)
        ).scalar_one_or_none()
        if version is None:
            return None, None, failed
        lease = Lease(conversation_id, version)
        user = session.scalar(select(Conversation.user_id).where(Conversation.id == conversation_id))
        while True:
            row = session.execute(
                select(Message, func.extract("epoch", func.now() - Message.created_at))
                .where(Message.conversation_id == conversation_id, Message.status.in_(PENDING))
                .order_by(Message.seq)
                .limit(1)
            ).one_or_none()
            if row is None:
                _release(session, lease)
                return lease, None, failed
            message, age = row[0], float(row[1])
            reason = _give_up_reason(message, age, rt)
            if reason is None:
                break
            message.status, message.error = Status.FAILED, reason
            failed.append(message.id)
            session.flush()
        message.status = Status.PROCESSING
        message.attempts += 1
        session.flush()
        question = Question(
            id=message.id,
            conversation_id=conversation_id,
            user=user or "",
            seq=message.seq,
            content=message.content,
            attempt=message.attempts,
            request_id=message.request_id,
            history=[
                Turn(seq=row.seq, role=row.role.value, content=row.content, tool_calls=row.tool_calls or [])
                for row in history_for(session, message)
            ],
            waited_seconds=age,
        )
    return lease, question, failed


def _give_up_reason(message: Message, age: float, rt: Runtime) -> str | None:
    if message.attempts >= rt.settings.max_attempts:
        return f"Not answered after {message.attempts} attempts; retry the message to try again."
    if age > rt.settings.answer_deadline_seconds:
        return f"Not answered within {int(rt.settings.answer_deadline_seconds)} seconds; retry the message."
    return None


def _holds(session: Session, lease: Lease) -> bool:
    """Lock the conversation row and check the fencing token: true while the lease is ours."""
    current = session.scalar(
        select(Conversation.lease_version).where(Conversation.id == lease.conversation_id).with_for_update()
    )
    return current == lease.version


def _release(session: Session, lease: Lease) -> None:
    session.execute(
        update(Conversation)
        .where(Conversation.id == lease.conversation_id, Conversation.lease_version == lease.version)
        .values(lease_expires_at=None)
    )


def commit_reply(rt: Runtime, lease: Lease, question: Question, reply: Reply) -> tuple[int, float] | None:
    """Store the reply and mark the question answered, if the lease is still ours.
    Returns the reply's seq and the seconds since the question was accepted, or None when the
    reply was discarded."""
    try:
        with rt.sessions.begin() as session:
            return _store_reply(session, lease, question, reply)
    except _DuplicateReply:  # unreachable while the fence holds; the constraint is the backstop
        log.error("duplicate_reply_suppressed", message_id=str(question.id))
        return None


class _DuplicateReply(Exception):
    """Raised inside the commit transaction to roll it back whole."""


def _store_reply(session: Session, lease: Lease, question: Question, reply: Reply) -> tuple[int, float] | None:
    if not _holds(session, lease):
        return None
    seq = session.execute(
        update(Conversation)
        .where(Conversation.id == lease.conversation_id)
        .values(last_seq=Conversation.last_seq + 1, lease_expires_at=None)
        .returning(Conversation.last_seq)
    ).scalar_one()
    stored = session.execute(
        insert(Message)
        .values(
            conversation_id=lease.conversation_id,
            seq=seq,
            role=Role.ASSISTANT,
            content=reply.content,
            reply_to_id=question.id,
            tool_calls=reply.tool_calls,
            context_seq=max((turn.seq for turn in question.history), default=0),
            request_id=question.request_id,
        )
        .on_conflict_do_nothing(index_elements=[Message.reply_to_id])
        .returning(Message.id)
    ).first()
    if stored is None:
        raise _DuplicateReply
    latency = session.execute(
        update(Message)
        .where(Message.id == question.id)
        .values(status=Status.ANSWERED, error=None)
        .returning(func.extract("epoch", func.now() - Message.created_at))
    ).scalar_one()
    return seq, float(latency)


def finish_unanswered(rt: Runtime, lease: Lease, question: Question, *, error: str | None) -> bool:
    """Give the message back: `queued` again (error None) or `failed` with a readable error.
    Releases the lease. False when the lease was no longer ours (someone else has it now)."""
    with rt.sessions.begin() as session:
        if not _holds(session, lease):
            return False
        values = (
            {"status": Status.QUEUED, "enqueued_at": func.now()}
            if error is None
            else {"status": Status.FAILED, "error": error}
        )
        session.execute(update(Message).where(Message.id == question.id).values(**values))
        _release(session, lease)
    return True


def next_pending(rt: Runtime, conversation_id: uuid.UUID) -> uuid.UUID | None:
    """The conversation's earliest unanswered message, marked as enqueued now."""
    with rt.sessions.begin() as session:
        return session.execute(
            update(Message)
            .where(
                Message.id
                == select(Message.id)
                .where(Message.conversation_id == conversation_id, Message.status.in_(PENDING))
                .order_by(Message.seq)
                .limit(1)
                .scalar_subquery()
            )
            .values(enqueued_at=func.now())
            .returning(Message.id)
        ).scalar_one_or_none()


@contextmanager
def renewing(rt: Runtime, lease: Lease) -> Iterator[None]:
    """Renew the lease every third of its length while a generation runs, so a slow but live
    generation keeps it; a dead worker stops renewing and its lease runs out."""
    stop = threading.Event()
    lease_for = timedelta(seconds=rt.settings.lease_seconds)

    def renew() -> None:
        while not stop.wait(rt.settings.lease_seconds / 3):
            try:
                with rt.sessions.begin() as session:
                    renewed = session.execute(
                        update(Conversation)
                        .where(Conversation.id == lease.conversation_id,
                               Conversation.lease_version == lease.version)
                        .values(lease_expires_at=func.now() + lease_for)
                        .returning(Conversation.id)
                    ).first()
                if renewed is None:
                    log.warning("lease_lost", conversation_id=str(lease.conversation_id))
                    return
            except Exception as error:  # a failed renewal must not kill the generation
                log.warning("lease_renewal_failed", error=str(error).splitlines()[0])

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
