"""Accepting a message, on a connection rolled back after each test: numbering, conversations,
idempotent replays, and nothing stored for another user's conversation."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, update

from models import DailyUsage, Message, Status, WebhookEndpoint, WebhookEvent
from web.accept import accept_message
from web.problems import Problem

from .support import NO_QUOTAS, accept, own_transaction


def test_messages_are_numbered_in_their_conversation(rolled_back) -> None:
    first = accept(rolled_back, "alice", "add buy milk")
    conversation_id = first.body["conversation_id"]
    second = accept(rolled_back, "alice", "show my tasks", conversation_id)
    assert (first.status, second.status) == (202, 202)
    assert [first.body["message"]["seq"], second.body["message"]["seq"]] == [1, 2]
    assert second.body["message"]["status"] == Status.QUEUED.value
    stored = rolled_back.scalars(select(Message.content).where(Message.conversation_id == uuid.UUID(conversation_id))
                                 .order_by(Message.seq)).all()
    assert stored == ["add buy milk", "show my tasks"]
    # Counted in alice's day by the statements that stored them.
    assert rolled_back.scalar(select(DailyUsage.messages).where(DailyUsage.user_id == "alice")) == 2


def test_a_retry_with_the_same_key_replays_the_first_answer(rolled_back) -> None:
    first = accept(rolled_back, "bob", "add call mom", key="k-1")
    again = accept(rolled_back, "bob", "add call mom", key="k-1")
    assert again.replayed and again.body == first.body and again.message_id is None
    assert rolled_back.scalar(select(func.count()).select_from(Message)
                              .where(Message.conversation_id == uuid.UUID(first.body["conversation_id"]))) == 1


def test_another_users_conversation_is_not_found_and_nothing_is_stored(rolled_back) -> None:
    theirs = accept(rolled_back, "carol", "add water plants").body["conversation_id"]
    with pytest.raises(Problem) as refused:
        accept(rolled_back, "mallory", "add something", theirs)
    assert refused.value.status == 404
    assert rolled_back.scalar(select(func.count()).select_from(Message)
                              .where(Message.conversation_id == uuid.UUID(theirs))) == 1
    # Not even counted: the statement that would have stored it counts only what it stored (here run
    # without a transaction of its own, as the autocommit path runs it).
    with pytest.raises(Problem):
        accept_message(rolled_back, user="mallory", content="add again", conversation_id=theirs, request_id="unit",
                       idempotency=None, settings=NO_QUOTAS)
    assert rolled_back.scalar(select(DailyUsage.messages).where(DailyUsage.user_id == "mallory")) is None


def test_nothing_outlives_the_test(engine, rolled_back) -> None:
    accept(rolled_back, "dave", "add outlive nothing")
    with engine.connect() as other:  # another connection does not see the uncommitted outer transaction
        count = select(func.count()).select_from(Message).where(Message.content == "add outlive nothing")
        assert other.scalar(count) == 0


def _send(session, user: str, content: str, conversation_id: str, on_busy: str):
    with own_transaction(session):
        return accept_message(session, user=user, content=content, conversation_id=conversation_id,
                              request_id="unit", idempotency=None, settings=NO_QUOTAS, on_busy=on_busy)


def test_interrupt_stops_the_conversations_questions_by_the_one_rule_and_reject_refuses(rolled_back) -> None:
    with rolled_back.begin_nested():
        rolled_back.add(WebhookEndpoint(user_id="erin", url="https://example.com/hook",
                                        events=["message.cancelled"], secret="whsec_test"))
    first = accept(rolled_back, "erin", "Add task: one")
    conversation = first.body["conversation_id"]
    second = accept(rolled_back, "erin", "Add task: two", conversation)
    generated, queued = (uuid.UUID(accepted.body["message"]["id"]) for accepted in (first, second))
    rolled_back.execute(update(Message).where(Message.id == generated).values(status=Status.PROCESSING))

    with pytest.raises(Problem) as refused:
        _send(rolled_back, "erin", "Add task: not now", conversation, "reject")
    assert refused.value.status == 409 and refused.value.extensions["busy_message_id"] == str(generated)

    interrupting = _send(rolled_back, "erin", "Add task: instead", conversation, "interrupt")
    assert sorted(interrupting.interrupted) == sorted([(generated, Status.CANCELLING), (queued, Status.CANCELLED)])
    statuses = dict(rolled_back.execute(select(Message.id, Message.status).where(
        Message.conversation_id == uuid.UUID(conversation))).all())
    assert statuses == {generated: Status.CANCELLING, queued: Status.CANCELLED, interrupting.message_id: Status.QUEUED}
    # The queued one is final now, its event written by the statement that cancelled it; the one
    # being generated gets its event when its worker stores what it wrote (worker/claim_sql.py).
    events = rolled_back.execute(select(WebhookEvent.question_id, WebhookEvent.type)
                                 .where(WebhookEvent.user_id == "erin")).all()
    assert [tuple(event) for event in events] == [(queued, "message.cancelled")]
