"""A user stopping questions: the one rule for the cancel call, a message sent with `on_busy`
"interrupt", and an erasure (DELETE /me).

A queued question is `cancelled` at once (never generated), with its webhook event in the same
statement; one being generated becomes `cancelling`, and the worker generating it stores what it
wrote and makes it `cancelled` (worker/claim_sql.py). Each statement returns the questions it
stopped — id, conversation_id, and status as it left them — so that the caller can tell their
workers (a cancel on Redis) and their waiting clients, once it has committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, case, func, select, update

from ..tables.entities import PENDING, Message, Status, status_cast, status_in
from .outbox import change, events_of

_messages = Message.__table__


def _stop(which: ColumnElement[bool]) -> Select[Any]:
    status = _messages.c.status
    stopped = (
        update(_messages).where(which, status_in(status, *PENDING))
        .values(status=case((status == Status.QUEUED, status_cast(Status.CANCELLED, status.type)),
                            else_=status_cast(Status.CANCELLING, status.type)),
                updated_at=func.now())
        .returning(_messages.c.id, _messages.c.conversation_id, _messages.c.user_id, status)
        .cte("stopped")
    )
    outbox = events_of(select(*change(stopped.c.user_id, stopped.c.id, stopped.c.status))
                       .where(status_in(stopped.c.status, Status.CANCELLED)))
    return select(stopped.c.id, stopped.c.conversation_id, stopped.c.status).add_cte(*outbox)


# One question (POST /messages/{id}/cancel).
STOP_QUESTION = _stop(_messages.c.id == bindparam("question_id"))
# A conversation's unanswered questions (a message sent with on_busy "interrupt").
STOP_IN_CONVERSATION = _stop(_messages.c.conversation_id == bindparam("conversation"))
# Everything the user has waiting or generated (DELETE /me, and the erasure again when it starts,
# for a message that slipped in between).
STOP_USERS_QUESTIONS = _stop(_messages.c.user_id == bindparam("user"))
