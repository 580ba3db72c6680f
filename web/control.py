"""Controlling a question once it is sent (contract: "Controlling a generation"): retry a failed
one, cancel one being answered (from any node: Postgres decides, Redis wakes the worker), ask the
latest one again or edit it, and read every version of its reply."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Blueprint, Response, g, jsonify
from sqlalchemy import Float, cast, func, select, update
from sqlalchemy.orm import Session

from models import FINAL, GENERATING, Conversation, Message, Role, Status, Task
from models.coordination.messaging import announce, read_partials, request_cancel, send_answer_job
from models.representation import message_json, version_json
from models.sql.queries import owned_message_with_reply, reply_versions
from models.sql.stopping import STOP_QUESTION

from . import schemas
from .accept import POLL_URL
from .auth import authenticate
from .inputs import optional_json_body
from .problems import Problem
from .quotas import charge_message
from .services import after_commit, reader, services, transaction
from .shown import refreshed_or_404
from .spec import operation
from .writes import refuse_while_erasing

bp = Blueprint("control", __name__, url_prefix="/api/v1")
log = structlog.get_logger(__name__)


@bp.before_request
def _identify() -> None:
    authenticate()


@bp.post("/messages/<message_id>/retry")
@operation("Put a failed message back in the queue", responses={202: schemas.Accepted})
def retry_message(message_id: str) -> Response:
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        row, _reply = _question_or_404(session, message_id)
        requeued = session.execute(
            update(Message)
            .where(Message.id == row.id, Message.status == Status.FAILED)
            .values(status=Status.QUEUED, attempts=0, error=None, enqueued_at=func.now(), **_back_in_the_queue())
            .returning(Message.id)
        ).first()
        if requeued is None:
            raise Problem(409, f"Only a failed message can be retried; this one is {row.status.value}.",
                          slug="not-failed")
        refreshed_or_404(session, row, "message")
        _send_again(row)
    return _requeued(row)


def _back_in_the_queue() -> dict[str, Any]:
    """The columns of a question queued again: a new place in its user's share of its lane (asking
    again is waiting again, like a new message), no expiry and no backoff left from before."""
    weight = cast(services().settings.weight_of(g.tier), Float)
    return {"fair_tag": func.next_fair_tag(g.user, Message.lane, weight), "expires_at": None, "not_before": None}


def _send_again(row: Message) -> None:
    """Once the question is back in the queue: its job, and the news."""
    after_commit(send_answer_job, services().producer, row.id, g.request_id)
    after_commit(announce, services().redis, row.conversation_id, row.id, Status.QUEUED.value)


def _requeued(row: Message) -> Response:
    """The 202 of a question put back in the queue."""
    response = jsonify({"conversation_id": str(row.conversation_id), "message": message_json(row),
                        "poll_url": POLL_URL.format(row.id)})
    response.status_code = 202
    response.headers["Location"] = POLL_URL.format(row.id)
    return response


def _question_or_404(session: Session, message_id: str) -> tuple[Message, Message | None]:
    found = owned_message_with_reply(session, g.user, message_id)
    if found is None or found[0].role is not Role.USER:
        raise Problem(404, "No such message.")
    return found


@bp.post("/messages/<message_id>/cancel")
@operation("Cancel a question: queued, it is never generated; processing, its generation stops and keeps "
           "the text written so far (it reads cancelling until that is stored)",
           responses={200: schemas.UserMessageOut})
def cancel_message(message_id: str) -> dict[str, Any]:
    return cancel_question(message_id)


def cancel_question(message_id: str) -> dict[str, Any]:
    """Cancel the user's question (as the view above says) and show it as it is now; also the
    OpenAI-compatible API's cancel of a response."""
    with transaction() as session:
        row, reply = _question_or_404(session, message_id)
        # Queued: cancelled now, with its webhook event; being generated: cancelling (its worker, wherever
        # it is, stops and settles it). None when it was neither.
        stopped = session.execute(STOP_QUESTION, {"question_id": row.id}).first()
        was = stopped.status if stopped is not None else None
        # The question as it is now: cancelled or cancelling by this statement or another cancel
        # (the same 200), or answered or failed meanwhile (409).
        refreshed_or_404(session, row, "message")
        if was is None and row.status not in (Status.CANCELLED, Status.CANCELLING):
            raise Problem(409, f"Only a queued or processing message can be cancelled; this one is "
                          f"{row.status.value}.", slug="not-cancellable")
        if was is Status.CANCELLING:
            after_commit(request_cancel, services().redis, [row.id])
        if was is not None:
            after_commit(announce, services().redis, row.conversation_id, row.id, was.value)
    if was is not None:
        log.info("message_cancelled", message_id=str(row.id), status=was.value)
    # Cancelling: the text so far, which its worker is about to store as the reply.
    written = read_partials(services().redis, {row.id: row.attempts}) if row.status in GENERATING else {}
    return message_json(row, reply, written.get(row.id))


@bp.post("/messages/<message_id>/regenerate")
@operation("Answer the conversation's latest question again, optionally with its text edited; earlier "
           "replies are kept as versions", body=schemas.Regenerate, responses={202: schemas.Accepted})
def regenerate_message(message_id: str) -> Response:
    body = optional_json_body(schemas.Regenerate)
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        row, _reply = _question_or_404(session, message_id)
        # The conversation's row first, as every writer takes it: a post or another regenerate waits.
        session.execute(select(Conversation.id).where(Conversation.id == row.conversation_id).with_for_update())
        latest = session.scalar(select(func.max(Message.seq)).where(Message.conversation_id == row.conversation_id,
                                                                    Message.role == Role.USER))
        refreshed_or_404(session, row, "message")
        if row.seq != latest:
            raise Problem(409, "Only the conversation's latest question can be regenerated.", slug="not-latest")
        if row.status not in FINAL:
            raise Problem(409, f"The message is still {row.status.value}; cancel it first or wait for its reply.",
                          slug="not-finished")
        charge_message(session, g.user, services().settings)  # asking again is another message
        session.execute(update(Message).where(Message.reply_to_id == row.id, Message.superseded.is_(False))
                        .values(superseded=True, updated_at=func.now()))
        # Asking again is a new request to answer: the tasks the earlier answers added keep
        # existing, but no longer stand for this question's calls, which the todo tools replay
        # by (question, call) so that a crashed attempt adds nothing twice. Without this, an
        # edited "Add task: walk the cat" found "walk the dog" under its first call and said so.
        session.execute(update(Task).where(Task.origin_message_id == row.id)
                        .values(origin_message_id=None, origin_call=None))
        session.execute(update(Message).where(Message.id == row.id).values(
            status=Status.QUEUED, attempts=0, error=None, enqueued_at=func.now(), updated_at=func.now(),
            **_back_in_the_queue(),
            content=body.content if body.content is not None else row.content))
        refreshed_or_404(session, row, "message")
        _send_again(row)
    log.info("message_regenerated", message_id=str(row.id), edited=body.content is not None)
    return _requeued(row)


@bp.get("/messages/<message_id>/replies")
@operation("Every version of a question's reply, newest first", responses={200: schemas.ReplyVersions})
def list_replies(message_id: str) -> dict[str, Any]:
    row, _reply = _question_or_404(reader(), message_id)
    return {"items": [version_json(version, row) for version in reply_versions(reader(), row.id)]}
