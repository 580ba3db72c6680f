"""The scheduler's decisions, claim by claim, on a connection rolled back after each test: the order
in which the worker's claim (worker/claim_sql.py) starts the waiting messages of several users, by
the same statements the workers run. The tests against real workers (tests/test_fairness.py) show
the same order end to end."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from models import Lane, Message, Status, WebhookEndpoint, WebhookEvent
from models.sql import queries
from web.problems import Problem
from worker import claim_sql, claims
from worker.engine import Reply
from worker.runtime import Runtime

from .support import NO_QUOTAS, OneConnection, accept, hide_the_queue_of_other_tests


def runtime_for(session: Session, **settings: object) -> Runtime:
    hide_the_queue_of_other_tests(session)
    return Runtime(settings=NO_QUOTAS.model_copy(update=settings), sessions=None,  # type: ignore[arg-type]
                   db=OneConnection(session), redis=None, engine=None)  # type: ignore[arg-type]


def post_in_new_conversations(session: Session, user: str, conversations: int, each: int = 1, **asked) -> list[str]:
    """`each` messages in each of `conversations` new conversations; their ids in posting order."""
    ids = []
    for number in range(conversations):
        first = accept(session, user, f"add task {number}.0", **asked)
        ids.append(first.body["message"]["id"])
        for later in range(1, each):
            ids.append(accept(session, user, f"add task {number}.{later}", first.body["conversation_id"],
                              **asked).body["message"]["id"])
    return ids


def start_next(runtime: Runtime) -> claims.Claimed | None:
    """The next claim: a question under its conversation's lease, or None when none could start."""
    claimed = claims.claim(runtime)
    if isinstance(claimed, claims.Claimed):
        return claimed
    assert claimed == claims.NothingClaimed()  # nothing claimed, and nothing given up on the way
    return None


def starters(runtime: Runtime, count: int) -> list[str]:
    """Whose messages the next `count` claims start (each holding its conversation: none ends)."""
    started = []
    for _ in range(count):
        claimed = start_next(runtime)
        assert claimed is not None, f"only {len(started)} messages could start"
        started.append(claimed.question.user)
    return started


def answer(runtime: Runtime, claimed: claims.Claimed) -> None:
    reply = Reply(content="done", tool_calls=[])
    assert claims.commit_reply(runtime, claimed.lease, claimed.question, reply) is not None


def test_a_light_users_message_starts_next_to_a_heavy_users_backlog(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    post_in_new_conversations(rolled_back, "heavy", 30, each=3)
    light = accept(rolled_back, "light", "show my tasks").body["message"]["id"]
    # FIFO would start it after the 30 conversations' first messages (and, as they finish, their
    # seconds and thirds); fair share starts it among the very first.
    first = [start_next(runtime) for _ in range(3)]
    assert str(light) in [str(claimed.question.id) for claimed in first if claimed is not None]


def test_a_user_alone_starts_as_many_as_there_are_claims(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    post_in_new_conversations(rolled_back, "alone", 5)
    assert starters(runtime, 5) == ["alone"] * 5
    assert start_next(runtime) is None  # each conversation is being answered; nothing else waits


def test_starts_follow_the_users_weights(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    post_in_new_conversations(rolled_back, "pro", 40, weight=4.0)
    post_in_new_conversations(rolled_back, "free", 40, weight=1.0)
    shares = Counter(starters(runtime, 25))
    assert 3.5 <= shares["pro"] / shares["free"] <= 4.5, shares


def test_a_conversation_is_answered_in_order_and_one_at_a_time(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    ids = post_in_new_conversations(rolled_back, "sequential", 1, each=3)
    first = start_next(runtime)
    assert first is not None and str(first.question.id) == ids[0]
    assert start_next(runtime) is None  # the second waits for the first's reply
    answer(runtime, first)
    second = start_next(runtime)
    assert second is not None and str(second.question.id) == ids[1]


def test_batch_work_starts_only_when_no_interactive_message_can(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    post_in_new_conversations(rolled_back, "nightly", 3, lane=Lane.BATCH)
    post_in_new_conversations(rolled_back, "person", 2)
    assert starters(runtime, 2) == ["person", "person"]
    assert starters(runtime, 3) == ["nightly"] * 3


def test_batch_work_that_waited_long_enough_competes_with_interactive_work(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    waited = post_in_new_conversations(rolled_back, "nightly", 1, lane=Lane.BATCH)[0]
    post_in_new_conversations(rolled_back, "person", 20)
    rolled_back.execute(update(Message).where(Message.id == uuid.UUID(waited))
                        .values(created_at=func.now() - text("interval '1 hour'")))
    promoted = rolled_back.execute(claim_sql.PROMOTE_AGED_BATCH, {"most": 10, "age": 600}).all()
    assert [str(row.id) for row in promoted] == [waited]
    # It joined the interactive lane as a new arrival of its user: among the first two to start,
    # not after the twenty interactive messages that were there before it.
    assert "nightly" in starters(runtime, 2)


def test_a_user_at_their_generation_cap_waits_while_others_start(rolled_back) -> None:
    runtime = runtime_for(rolled_back, max_generations_per_user=1)
    post_in_new_conversations(rolled_back, "busy", 3)
    assert starters(runtime, 1) == ["busy"]
    assert start_next(runtime) is None  # busy's other two wait for its one generation
    post_in_new_conversations(rolled_back, "other", 1)
    assert starters(runtime, 1) == ["other"]


def test_an_expired_message_never_starts_and_its_conversation_moves_on(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    with rolled_back.begin_nested():
        rolled_back.add(WebhookEndpoint(user_id="hurried", url="https://example.com/hook", events=["message.expired"],
                                        secret="whsec_test"))
    first = accept(rolled_back, "hurried", "add buy milk", expires_in=30)
    conversation = first.body["conversation_id"]
    second = accept(rolled_back, "hurried", "show my tasks", conversation)
    # Its 30 seconds pass (now() is the transaction's start: move the expiry instead).
    rolled_back.execute(update(Message).where(Message.id == uuid.UUID(first.body["message"]["id"]))
                        .values(expires_at=func.now() - text("interval '1 second'")))
    assert start_next(runtime) is None  # an expired message is never claimed ...
    expired = rolled_back.execute(claim_sql.EXPIRE, {"most": 10, "reason": "expired"}).all()
    assert [str(row.id) for row in expired] == [first.body["message"]["id"]]
    assert rolled_back.scalar(select(Message.status).where(
        Message.id == uuid.UUID(first.body["message"]["id"]))) is Status.EXPIRED
    # Its webhook event is written by the statement that expired it.
    assert rolled_back.scalars(select(WebhookEvent.type).where(
        WebhookEvent.question_id == uuid.UUID(first.body["message"]["id"]))).all() == ["message.expired"]
    started = start_next(runtime)  # ... and the next one in its conversation starts
    assert started is not None and str(started.question.id) == second.body["message"]["id"]


def test_a_lease_that_ran_out_is_taken_away_and_its_question_queued_again(rolled_back) -> None:
    runtime = runtime_for(rolled_back)
    accept(rolled_back, "crashy", "add buy milk")
    dead = start_next(runtime)
    assert dead is not None
    rolled_back.execute(text("UPDATE conversations SET lease_expires_at = now() - interval '1 second' "
                             "WHERE id = :id"), {"id": dead.lease.conversation_id})
    requeued = rolled_back.execute(claim_sql.REVOKE_EXPIRED_LEASES, {"most": 10}).all()
    assert [row.id for row in requeued] == [dead.question.id]
    again = start_next(runtime)
    assert again is not None and again.question.id == dead.question.id
    assert again.question.attempt == dead.question.attempt + 1
    # The presumed-dead worker was only slow: its reply is discarded, the new one is stored.
    assert claims.commit_reply(runtime, dead.lease, dead.question, Reply(content="late", tool_calls=[])) is None
    answer(runtime, again)


def test_a_user_with_too_many_messages_waiting_is_refused_and_nothing_is_stored(rolled_back) -> None:
    settings = NO_QUOTAS.model_copy(update={"max_queued_per_user": 3})
    hide_the_queue_of_other_tests(rolled_back)
    conversation = accept(rolled_back, "flood", "add 1", settings=settings).body["conversation_id"]
    accept(rolled_back, "flood", "add 2", conversation, settings=settings)
    accept(rolled_back, "flood", "add 3", settings=settings)
    for into in (conversation, None):
        with pytest.raises(Problem) as refused:
            accept(rolled_back, "flood", "add 4", into, settings=settings)
        assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
    assert rolled_back.scalar(select(func.count()).where(Message.user_id == "flood")) == 3
    # One of them starts: there is room again, and the refused post took no seq.
    rolled_back.execute(update(Message).where(Message.user_id == "flood", Message.seq == 1)
                        .values(status=Status.PROCESSING))
    after = accept(rolled_back, "flood", "add 4", conversation, settings=settings)
    assert after.status == 202 and after.body["message"]["seq"] == 3


def test_the_202_says_as_many_are_ahead_as_a_read_of_the_message_does(rolled_back) -> None:
    """The count in the accepting statement is of the stored message alone (it once counted pairs of
    every queued message with every message of the table: wrong figures, and a scan of the whole
    table under each POST)."""
    from models.sql.queries import queue_positions

    hide_the_queue_of_other_tests(rolled_back)
    for number in range(3):
        accept(rolled_back, "heavy", f"backlog {number}")
    with rolled_back.begin_nested():  # answered history elsewhere in the table, which must not count
        rolled_back.execute(text("INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, "
                                 "attempts, lane, fair_tag) SELECT gen_random_uuid(), conversation_id, user_id, "
                                 "seq + 100, 'user', 'old', 'answered', 0, 0, 1e9 FROM messages "
                                 "WHERE user_id = 'heavy'"))
    accepted = accept(rolled_back, "light", "my turn?").body["message"]
    read = queue_positions(rolled_back.connection(), [uuid.UUID(accepted["id"])])[uuid.UUID(accepted["id"])]
    # Its share starts level with the first heavy message's (the lane's virtual time): tied with it.
    # Ties go first come, first served, here the same instant (one transaction): the ids decide
    # (ready_order()), and at most that one is ahead, as a read of it says too.
    assert accepted["queue"]["ahead"] == read and read in (0, 1), accepted


def test_no_count_of_the_queue_scans_more_than_the_queued_messages() -> None:
    """Each statement that says how many are ahead reads the queue (`ahead_of_it`, by its partial
    index) and nothing else: SQLAlchemy adds the outer table to a nested FROM unless told not to."""
    from sqlalchemy.dialects import postgresql

    from models.sql import queries
    from web import accept as accepting

    statements = [queries._QUEUE_POSITIONS, queries._FIRST_IN_QUEUE,
                  *(statement for storing in accepting._STORING.values()
                    for statement in (storing.into_new, storing.into_existing))]
    for statement in statements:
        sql = str(statement.compile(dialect=postgresql.dialect())).replace("\n", " ")
        assert "FROM messages AS ahead_of_it WHERE" in sql.replace("  ", " "), sql


def test_a_message_read_as_queued_that_starts_before_its_place_is_counted_is_next_in_line(app) -> None:
    """A read shows a queued message, then counts what is ahead of it: a worker may claim it in
    between (CI saw a `queued` message with `queue: null`). Nothing is ahead of it then."""
    from web.shown import with_queue_positions

    shown = [{"id": str(uuid.uuid4()), "status": "queued"}, {"id": str(uuid.uuid4()), "status": "answered"}]
    with app.test_request_context():
        with_queue_positions(shown)
    assert shown[0]["queue"] == {"ahead": 0, "eta_seconds": None} and "queue" not in shown[1]


def test_a_queued_messages_count_reads_the_ready_index_in_a_generic_plan(rolled_back: Session) -> None:
    """A statement the driver prepared runs on a generic plan after five executions. With the
    status bound, that plan could use no partial index (ix_messages_ready's predicate is `status =
    'queued'`) and counted the messages ahead of a POST by scanning the whole table."""
    messages = Message.__table__
    compiled = (select(queries.ahead_of(messages)).where(messages.c.id == bindparam("message_id"))
                .compile(dialect=postgresql.psycopg.dialect()))
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", str(compiled))))
    prepared = re.sub(r"%\((\w+)\)s", lambda match: f"${names.index(match.group(1)) + 1}", str(compiled))
    values = ", ".join("NULL" if compiled.params[name] is None else f"'{compiled.params[name]}'" for name in names)
    connection = rolled_back.connection()
    connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    connection.exec_driver_sql(f"PREPARE queue_count AS {prepared}")
    try:
        plan = "\n".join(connection.exec_driver_sql(f"EXPLAIN EXECUTE queue_count({values})").scalars())
    finally:
        connection.exec_driver_sql("DEALLOCATE queue_count")
    # Read through an index whose predicate the literal implies (ix_messages_ready, or on an empty
    # table ix_messages_user_pending, as Postgres 18 picks), never a scan of every message.
    reads = [line for line in plan.splitlines() if "on messages ahead_of_it" in line]
    assert reads and all("Index" in line for line in reads), plan
