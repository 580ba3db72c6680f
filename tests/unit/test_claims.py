"""The worker's claim and commit (worker/claims.py, one statement each) on a connection rolled back
after each test: a claimed question is `processing` under a lease, its reply is stored once, and the
answered message its commit announces is exactly what a read of it shows (the web answers waiting
long-polls with it without reading it again)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Executable, func, select, text, update
from sqlalchemy.dialects import postgresql

from models import Message, Status, WebhookEndpoint, WebhookEvent
from models.representation import message_json
from models.sql.queries import owned_message_with_reply, shown_message_with_reply
from worker import claim_sql, claims
from worker.engine import Reply
from worker.outcomes import Cancelled
from worker.runtime import Runtime

from .support import NO_QUOTAS, OneConnection, accept, hide_the_queue_of_other_tests


@pytest.fixture
def runtime(rolled_back) -> Runtime:
    hide_the_queue_of_other_tests(rolled_back)
    return Runtime(settings=NO_QUOTAS, sessions=None, db=OneConnection(rolled_back),  # type: ignore[arg-type]
                   redis=None, engine=None)  # type: ignore[arg-type]


def test_a_claimed_question_is_answered_once_and_announced_as_a_read_shows_it(rolled_back, runtime: Runtime) -> None:
    accepted = accept(rolled_back, "alice", "Add task: buy milk")
    message_id = uuid.UUID(accepted.body["message"]["id"])

    claimed = claims.claim(runtime)
    assert isinstance(claimed, claims.Claimed) and claimed.question.id == message_id
    assert rolled_back.scalar(select(Message.status).where(Message.id == message_id)) is Status.PROCESSING
    # The conversation is leased and nothing else waits: a second claim (another worker, a
    # duplicate job) gets nothing.
    assert claims.claim(runtime) == claims.NothingClaimed()

    reply = Reply(content="Added “buy milk” to your list.",
                  tool_calls=[{"name": "add_task", "arguments": {"title": "buy milk"},
                               "result": {"task": {"id": str(uuid.uuid4()), "title": "buy milk", "done": False}}}],
                  usage={"prompt_tokens": 120, "completion_tokens": 9},
                  context={"messages_sent": 1, "messages_total": 1})
    committed = claims.commit_reply(runtime, claimed.lease, claimed.question, reply)
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
    again = claims.commit_reply(runtime, claimed.lease, claimed.question, reply)
    assert again is not None and again.seq is None and again.message is None
    assert rolled_back.scalar(select(func.count()).where(Message.reply_to_id == message_id)) == 1


@pytest.mark.parametrize("written", ["Added “buy", ""], ids=["with-text", "without-text"])
def test_a_stopped_generation_is_final_only_once_its_text_is_stored(
        rolled_back, runtime: Runtime, written: str) -> None:
    with rolled_back.begin_nested():
        rolled_back.add(WebhookEndpoint(user_id="alice", url="https://example.com/hook",
                                        events=["message.cancelled"], secret="whsec_test"))
    accepted = accept(rolled_back, "alice", "Add task: buy milk")
    message_id = uuid.UUID(accepted.body["message"]["id"])
    claimed = claims.claim(runtime)
    assert isinstance(claimed, claims.Claimed)
    # The cancel (web/control.py) makes a generated question cancelling; the worker settles it.
    rolled_back.execute(update(Message).where(Message.id == message_id).values(status=Status.CANCELLING))
    committed = claims.commit_reply(runtime, claimed.lease, claimed.question,
                                    Reply(content=written, tool_calls=[], finish="stop"))
    assert committed is not None and committed.status == "cancelled"
    rolled_back.expire_all()
    row, reply = owned_message_with_reply(rolled_back, "alice", str(message_id)) or (None, None)
    assert row is not None and row.status is Status.CANCELLED
    # Stored with the final status, in the same statement: text written is its reply; none, no reply.
    assert (reply.content, reply.finish.value) == (written, "cancelled") if written else reply is None
    # Its webhook event, naming the reply it has (if any), from the same statement.
    event = rolled_back.execute(select(WebhookEvent.type, WebhookEvent.reply_id)
                                .where(WebhookEvent.question_id == message_id)).one()
    assert event.type == "message.cancelled" and (event.reply_id is not None) == bool(written)


def test_a_stopped_generation_given_back_or_whose_worker_died_ends_cancelled(rolled_back, runtime: Runtime) -> None:
    for ending in ("given_back", "worker_died"):
        accept(rolled_back, "bob", f"Add task: {ending}")
        claimed = claims.claim(runtime)
        assert isinstance(claimed, claims.Claimed)
        question = claimed.question.id
        rolled_back.execute(update(Message).where(Message.id == question).values(status=Status.CANCELLING))
        if ending == "given_back":  # e.g. the model server failed just then
            assert claims.finish_unanswered(runtime, claimed, failed=False, error="timeout") == Cancelled(claimed)
        else:
            rolled_back.execute(text("UPDATE conversations SET lease_expires_at = now() - interval '1 second' "
                                     "WHERE id = :id"), {"id": claimed.lease.conversation_id})
            settled = rolled_back.execute(claim_sql.REVOKE_EXPIRED_LEASES, {"most": 10}).all()
            assert [(row.id, row.status) for row in settled] == [(question, "cancelled")]
        assert rolled_back.scalar(select(Message.status).where(Message.id == question)) is Status.CANCELLED



def test_a_claim_fails_for_good_what_was_tried_too_often_and_takes_the_next(rolled_back, runtime: Runtime) -> None:
    tried_out = accept(rolled_back, "carol", "Add task: one")
    conversation = tried_out.body["conversation_id"]
    next_one = accept(rolled_back, "carol", "Add task: two", conversation)
    first, second = (uuid.UUID(accepted.body["message"]["id"]) for accepted in (tried_out, next_one))
    # Every attempt it may have was made: the claim counts one more and gives it up on the way.
    rolled_back.execute(update(Message).where(Message.id == first).values(attempts=runtime.settings.max_attempts))

    claimed = claims.claim(runtime)
    assert isinstance(claimed, claims.Claimed)
    assert (claimed.question.id, claimed.gave_up) == (second, [first])
    failed = rolled_back.execute(select(Message.status, Message.error).where(Message.id == first)).one()
    assert failed.status is Status.FAILED and failed.error.startswith("Not answered after 5 attempts")

    # A conversation whose only waiting message is tried out: nothing to answer, its lease let go.
    alone = accept(rolled_back, "dave", "Add task: three")
    only = uuid.UUID(alone.body["message"]["id"])
    rolled_back.execute(update(Message).where(Message.id == only).values(attempts=runtime.settings.max_attempts))
    assert claims.claim(runtime) == claims.NothingClaimed(uuid.UUID(alone.body["conversation_id"]), [only])
    assert claims.claim(runtime) == claims.NothingClaimed()  # and nothing else could start


def _statements() -> dict[str, Executable]:
    found = {name: value for name, value in vars(claim_sql).items() if name.isupper() and isinstance(value, Executable)}
    found.update({f"CLAIM[{capped}]": statement for capped, statement in claim_sql.CLAIM.items()})
    return found


@pytest.mark.parametrize("name", sorted(_statements()))
def test_the_workers_statements_take_each_parameter_as_the_value_it_binds(name: str) -> None:
    # SQLAlchemy takes an execution parameter named like a column as one more value to SET, even in
    # an UPDATE inside a CTE (the reply's `content` once overwrote its question's): executed with
    # its own parameters, each statement must compile to the same SQL as without them.
    statement = _statements()[name]
    alone = statement.compile(dialect=postgresql.dialect())
    assert alone.params, "the statement binds values"
    executed = statement.compile(dialect=postgresql.dialect(), column_keys=sorted(alone.params))
    assert str(executed) == str(alone)


def test_the_checked_in_sql_is_what_the_statements_compile_to() -> None:
    """worker/claim_sql.sql is the worker's SQL as a reviewer reads it: a change to a statement
    must come with the file written again (`python -m worker.claim_sql`)."""
    assert claim_sql.SQL_FILE.read_text(encoding="utf-8") == claim_sql.as_sql(), \
        "worker/claim_sql.sql is stale: run `python -m worker.claim_sql` and commit the file"
