"""The worker's claim and commit (worker/claims.py, one statement each) on a connection rolled back
after each test: a claimed question is `processing` under a lease, its reply is stored once, and the
answered message its commit announces is exactly what a read of it shows (the web answers waiting
long-polls with it without reading it again)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, func, select, update
from sqlalchemy.orm import Session

from models import Message, Status
from models.queries import owned_message_with_reply, shown_message_with_reply
from models.representation import message_json
from worker import claims
from worker.engine import Reply
from worker.runtime import Runtime

from .accepting import NO_QUOTAS, accept


class OneConnection:
    """Stands in for the worker's engine: each `connect()` is a savepoint of the test's connection,
    so the claim's and the commit's statements run as they do in production, then roll back."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        connection = self.session.connection()
        with connection.begin_nested():
            yield connection


@pytest.fixture
def rt(rolled_back) -> Runtime:
    hide_the_queue_of_other_tests(rolled_back)
    return Runtime(settings=NO_QUOTAS, sessions=None, db=OneConnection(rolled_back),  # type: ignore[arg-type]
                   redis=None, engine=None)  # type: ignore[arg-type]


def hide_the_queue_of_other_tests(session: Session) -> None:
    """A claim takes whatever should start next in the whole database: inside the test's
    transaction (rolled back after it), messages that other fast tests left queued are set aside."""
    with session.begin():
        session.execute(update(Message).where(Message.status.in_([Status.QUEUED, Status.PROCESSING]))
                        .values(status=Status.FAILED))


def test_a_claimed_question_is_answered_once_and_announced_as_a_read_shows_it(rolled_back, rt: Runtime) -> None:
    accepted = accept(rolled_back, "alice", "Add task: buy milk")
    message_id = uuid.UUID(accepted.body["message"]["id"])

    claimed = claims.claim(rt)
    assert claimed.lease is not None and claimed.question is not None and claimed.question.id == message_id
    assert rolled_back.scalar(select(Message.status).where(Message.id == message_id)) is Status.PROCESSING
    # The conversation is leased and nothing else waits: a second claim (another worker, a
    # duplicate job) gets nothing.
    assert claims.claim(rt).lease is None

    reply = Reply(content="Added “buy milk” to your list.",
                  tool_calls=[{"name": "add_task", "arguments": {"title": "buy milk"},
                               "result": {"task": {"id": str(uuid.uuid4()), "title": "buy milk", "done": False}}}],
                  usage={"prompt_tokens": 120, "completion_tokens": 9},
                  context={"messages_sent": 1, "messages_total": 1})
    committed = claims.commit_reply(rt, claimed.lease, claimed.question, reply)
    assert committed is not None and committed.status == "answered" and committed.seq == 2

    rolled_back.expire_all()
    row, stored = owned_message_with_reply(rolled_back, "alice", str(message_id)) or (None, None)
    assert row is not None and stored is not None
    assert committed.message == message_json(row, stored)
    # And exactly what the API's read shows (GET /messages/{id}: the shown columns, no ORM).
    shown = shown_message_with_reply(rolled_back.connection(), "alice", message_id)
    assert shown is not None and committed.message == message_json(*shown)
    assert shown_message_with_reply(rolled_back.connection(), "mallory", message_id) is None
    assert committed.message["status"] == "answered" and committed.message["reply"]["content"] == reply.content
    # The same reply committed again (a redelivered job that got this far) stores nothing more.
    again = claims.commit_reply(rt, claimed.lease, claimed.question, reply)
    assert again is not None and again.seq is None and again.message is None
    assert rolled_back.scalar(select(func.count()).where(Message.reply_to_id == message_id)) == 1
