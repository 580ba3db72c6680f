"""The SQL of claiming and answering, each step one statement (one round trip, atomic on its own,
run in autocommit), built from named pieces. Kept together so the locking order is visible: the
conversation row first, then message rows — the same order the web front takes when it numbers a
new message. Values are bound (`bindparam`); only statuses are written into the SQL (`status_in`).

A bound value is never named like a column of a table a statement updates: SQLAlchemy takes an
execution parameter named like a column as one more value to SET, even in an UPDATE inside a CTE
(tests/unit/test_claims.py checks every statement here)."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    Float,
    Select,
    Text,
    bindparam,
    case,
    cast,
    extract,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.sql.expression import Executable

from models import GENERATING, PENDING, Conversation, Finish, Message, Role, Status, UserShare
from models.sql.outbox import change, events_of
from models.sql.queries import ready_order
from models.sql.usage import add_to_today
from models.tables.entities import status_cast, status_in, written_in_sql

conversations = Conversation.__table__
messages = Message.__table__
shares = UserShare.__table__

STATUS = messages.c.status.type
# A question that a worker generates for, or did (`cancelled`: a web node of the release before
# wrote it for a question being generated, during a rolling deploy; it is taken like `cancelling`).
STILL_GENERATED = (*GENERATING, Status.CANCELLED)


def _status(status: Status | ColumnElement[Any]) -> ColumnElement[Any]:
    return status_cast(status, STATUS)


def _seconds(name: str) -> ColumnElement[Any]:
    """An interval of the bound number of seconds `name`."""
    return func.make_interval(0, 0, 0, 0, 0, 0, cast(bindparam(name), Float))


def _age(table: Any) -> ColumnElement[float]:
    """Seconds since the row was created."""
    return cast(extract("epoch", func.now() - table.c.created_at), Float)


def _reply(column: str, type_: Any = None) -> ColumnElement[Any]:
    """The reply's value for `column`, bound as `reply_<column>`: never a column's name (see above)."""
    return bindparam(f"reply_{column}", type_=type_ if type_ is not None else messages.c[column].type)


def _our_lease() -> ColumnElement[bool]:
    """The conversation's lease is still the one we hold: our fencing token is current."""
    return (conversations.c.id == bindparam("conversation")) & (conversations.c.lease_version == bindparam("version"))


# ---- The question and its history ---------------------------------------------------------------


def _question_with_history(claimed: CTE) -> Select[Any]:
    """What a claimed conversation's earliest unanswered message and its history look like, as rows
    of (seq, role, content, tool_calls, claim): first the claim (seq 0, which no message has: the
    question's content, and in `claim` a json object of the lease and the question's details), then
    one row per message of the history. Rows rather than one aggregated json value, which Postgres
    must build and the worker decode whole, while rows stream out as stored; the claim's details
    travel in one column so that the history's rows stay narrow. They come in no promised order:
    the worker sorts them by seq, cheaper in Python on nearly sorted ints than ORDER BY in
    Postgres. Tool calls come as their json text, decoded only when an engine reads them.
    `claimed` is a CTE of (id, user_id, lease_version, last_seq). The question is taken only while
    it is still `queued`: a cancel or an expiry committed since the statement began leaves it alone
    (and the claim then holds a lease with nothing picked)."""
    m = messages.alias("m")
    earliest = (
        select(m.c.id).join_from(m, claimed, m.c.conversation_id == claimed.c.id)
        .where(status_in(m.c.status, *PENDING)).order_by(m.c.seq).limit(1)
        .cte("question")
    )
    picked = (
        update(m).where(m.c.id == earliest.c.id, status_in(m.c.status, Status.QUEUED))
        .values(status=Status.PROCESSING, attempts=m.c.attempts + 1, not_before=None, updated_at=func.now())
        .returning(m.c.id, m.c.seq, m.c.content, m.c.attempts, m.c.request_id, m.c.error, m.c.lane, m.c.fair_tag,
                   m.c.tool_calls, m.c.response_options, _age(m).label("age"))
        .cte("picked")
    )
    weight = select(shares.c.weight).where(shares.c.user_id == claimed.c.user_id, shares.c.lane == picked.c.lane)
    p = messages.alias("p")
    pending = select(func.count()).where(p.c.conversation_id == claimed.c.id, status_in(p.c.status, *PENDING))
    details = {
        "conversation_id": claimed.c.id, "user_id": claimed.c.user_id, "lease_version": claimed.c.lease_version,
        "last_seq": claimed.c.last_seq, "question_id": picked.c.id, "seq": picked.c.seq,
        "attempts": picked.c.attempts, "request_id": picked.c.request_id, "age": picked.c.age,
        "last_error": picked.c.error, "lane": picked.c.lane, "weight": weight.scalar_subquery(),
        "pending": pending.scalar_subquery(),
        # A question from /v1/responses: what it asked of the answer, and the outputs of the app's
        # function calls it carries.
        "options": picked.c.response_options, "tool_outputs": picked.c.tool_calls,
    }
    the_claim = select(
        literal(0).label("seq"), literal(Role.USER.value).label("role"), picked.c.content,
        cast(null(), Text).label("tool_calls"),
        func.json_build_object(*(part for key, value in details.items() for part in (literal(key), value)))
        .label("claim"),
    ).select_from(claimed.outerjoin(picked, true()))
    h = messages.alias("h")
    history = (
        select(h.c.seq, cast(h.c.role, Text), h.c.content, cast(h.c.tool_calls, Text), null())
        .select_from(claimed.join(picked, true()).join(h, h.c.conversation_id == claimed.c.id))
        .where(or_(h.c.seq < picked.c.seq, h.c.role == written_in_sql(Role.ASSISTANT, h.c.role.type)),
               ~h.c.superseded)
    )
    return union_all(the_claim, history)


# ---- The scheduler ------------------------------------------------------------------------------


class _Ready(NamedTuple):
    query: Select[Any]  # the conversations of the ready messages
    message: Any  # the aliases it reads them through: what the claim orders by and locks
    conversation: Any


def _ready(capped: bool) -> _Ready:
    """The scheduler (docs/scheduler.md): the conversations of queued messages that may start now.
    A message may start
    when it is its conversation's earliest unanswered one, its conversation has no live lease, its
    backoff is over and it has not expired. `capped` (MAX_GENERATIONS_PER_USER): a user already
    generating that many is passed over (an index count of their running messages; two claims at
    the same instant may each see one slot left: worker/claims.py makes capped claims take turns)."""
    m, c, e = messages.alias("m"), conversations.alias("c"), messages.alias("e")
    earlier_unanswered = (
        select(literal(1))
        .where(e.c.conversation_id == m.c.conversation_id, status_in(e.c.status, *PENDING), e.c.seq < m.c.seq)
        .exists()
    )
    ready = (
        select(c.c.id).join_from(m, c, c.c.id == m.c.conversation_id)
        .where(status_in(m.c.status, Status.QUEUED),
               or_(m.c.not_before.is_(None), m.c.not_before <= func.now()),
               or_(m.c.expires_at.is_(None), m.c.expires_at > func.now()),
               or_(c.c.lease_expires_at.is_(None), c.c.lease_expires_at < func.now()),
               ~earlier_unanswered)
    )
    if capped:
        r = messages.alias("r")
        running = select(func.count()).where(r.c.user_id == m.c.user_id, status_in(r.c.status, Status.PROCESSING))
        ready = ready.where(running.scalar_subquery() < bindparam("max_generations"))
    return _Ready(ready, m, c)


def _claim_fairest(capped: bool) -> Select[Any]:
    """Take the lease of the conversation of the message that should start next, and that message
    with its history. The order: interactive before batch, then by virtual start time (each user's
    messages tagged 1/weight apart from their user's last: next_fair_tag(), migration 0006), so
    that every user with waiting work gets an equal share of starts (weighted by tier), however
    many conversations they have waiting; equal tags first come, first served, as a queued
    message's `ahead` counts them (models/sql/queries.py ready_order). The walk follows
    ix_messages_ready and stops at the first ready message: it passes over only messages of busy
    conversations (at most the running generations' conversations' backlogs), not the queue;
    conversations another claim is taking at this instant are skipped."""
    ready, m, c = _ready(capped)
    candidate = (
        ready.order_by(*ready_order(m)).limit(1).with_for_update(of=c, skip_locked=True)
        .cte("candidate")
    )
    claimed = (
        update(conversations).where(conversations.c.id == candidate.c.id)
        .values(lease_version=conversations.c.lease_version + 1, lease_expires_at=func.now() + _seconds("lease"))
        .returning(conversations.c.id, conversations.c.user_id, conversations.c.lease_version,
                   conversations.c.last_seq)
        .cte("claimed")
    )
    return _question_with_history(claimed)


# Without, and with, a cap on each user's generations at once.
CLAIM = {capped: _claim_fairest(capped) for capped in (False, True)}

# How many messages could start now (counted up to :most): the sweeper rings that many doorbells,
# less the jobs already waiting in the broker.
READY_COUNT = select(func.count()).select_from(_ready(False).query.limit(bindparam("most")).subquery("ready"))

# The same, for the next message of a conversation whose lease we already hold.
PICK = _question_with_history(
    select(conversations.c.id, conversations.c.user_id, conversations.c.lease_version, conversations.c.last_seq)
    .where(_our_lease()).cte("claimed"))


# ---- Settling a question ------------------------------------------------------------------------


def _commit_reply() -> Select[Any]:
    """Store the reply and settle its question — only while our fencing token is current, in one
    statement. The question's row decides, under its lock: `processing` becomes `answered`; a
    question the user stopped meanwhile (`cancelling`) becomes `cancelled` with the text written so
    far stored as its reply, finish "cancelled" (none at all when there is none), and its webhook
    event; anything else (put back in the queue by a regenerate) stores nothing. A concurrent cancel
    either commits first (and this sees `cancelling`) or waits for this and finds the question
    answered: exactly one of the two. The lease is released in every case, and the tokens the
    generation used are added to the user's day, stored or not. A second current reply to one
    question violates uq_messages_current_reply and rolls the statement back whole."""
    lease = select(conversations.c.id, conversations.c.user_id).where(_our_lease()).with_for_update().cte("lease")
    prompt, completion = bindparam("prompt_tokens", type_=BigInteger), bindparam("completion_tokens", type_=BigInteger)
    tokens_used = add_to_today(lease.c.user_id, source=lease, when=prompt + completion > 0,
                               prompt_tokens=prompt, completion_tokens=completion).cte("used")
    question_id = bindparam("question_id", type_=messages.c.id.type)
    content = _reply("content")
    question = (
        update(messages)
        .where(messages.c.id == question_id, status_in(messages.c.status, *STILL_GENERATED),
               select(lease.c.id).exists())
        .values(status=case((messages.c.status == Status.PROCESSING, _status(Status.ANSWERED)),
                            else_=_status(Status.CANCELLED)),
                error=None, updated_at=func.now())
        .returning(messages.c.status, _age(messages).label("latency"), messages.c.seq, messages.c.content,
                   messages.c.created_at)
        .cte("question")
    )
    # A reply is stored when the question is answered, or cancelled with text written before.
    kept = select(question.c.status).where(or_(question.c.status == Status.ANSWERED, content != "")).cte("kept")
    fenced = (
        update(conversations).where(_our_lease())
        .values(last_seq=conversations.c.last_seq + select(func.count()).select_from(kept).scalar_subquery(),
                lease_expires_at=None, updated_at=func.now())
        .returning(conversations.c.last_seq)
        .cte("fenced")
    )
    finish = messages.c.finish.type
    reply_id = bindparam("reply_id", type_=messages.c.id.type)
    written = {
        "id": reply_id, "conversation_id": bindparam("conversation", type_=messages.c.conversation_id.type),
        "user_id": lease.c.user_id, "seq": fenced.c.last_seq, "role": literal(Role.ASSISTANT, messages.c.role.type),
        "content": content, "reply_to_id": question_id,
        "tool_calls": _reply("tool_calls", JSON(none_as_null=True)), "context_seq": _reply("context_seq"),
        "request_id": _reply("request_id"), "attempts": literal(0), "question_content": _reply("question_content"),
        "finish": cast(case((kept.c.status == Status.CANCELLED, literal(Finish.CANCELLED, finish)),
                            else_=_reply("finish")), finish),
        "usage": _reply("usage", JSON(none_as_null=True)), "context": _reply("context", JSON(none_as_null=True)),
        "model": _reply("model"), "pieces": _reply("pieces"), "created_at": func.now(), "updated_at": func.now(),
    }
    stored_with = lease.join(fenced, true()).join(kept, true())
    reply = (
        insert(messages).from_select(list(written), select(*written.values()).select_from(stored_with))
        .returning(messages.c.seq, messages.c.created_at)
        .cte("reply")
    )
    outbox = events_of(
        select(*change(lease.c.user_id, question_id, question.c.status,
                       reply_id=case((select(kept.c.status).exists(), reply_id))))
        .select_from(lease.join(question, true())))
    return (
        select(question.c.status, question.c.latency, reply.c.seq, question.c.seq.label("question_seq"),
               question.c.content.label("question_content"), question.c.created_at.label("question_created_at"),
               reply.c.created_at.label("reply_created_at"))
        .select_from(lease.outerjoin(question, true()).outerjoin(reply, true()))
        .add_cte(tokens_used, *outbox)
    )


COMMIT_REPLY = _commit_reply()


def _give_up() -> Select[Any]:
    """Give a message up (too many attempts, too old): failed, with a reason a person can read, and
    its webhook event."""
    error = bindparam("reason", type_=Text)
    given_up = (
        update(messages).where(messages.c.id == bindparam("question_id"))
        .values(status=Status.FAILED, error=error, updated_at=func.now())
        .returning(messages.c.id, messages.c.conversation_id)
        .cte("given_up")
    )
    outbox = events_of(
        select(*change(conversations.c.user_id, given_up.c.id, literal(Status.FAILED.value), error=error))
        .join_from(given_up, conversations, conversations.c.id == given_up.c.conversation_id))
    return select(func.count()).select_from(given_up).add_cte(*outbox)


GIVE_UP = _give_up()


def _give_back() -> Select[Any]:
    """Give the question back (queued again, to be tried after its backoff, or failed with an
    error) and release the lease, if ours. It keeps its place in the queue (its tag). A question
    the user stopped meanwhile (`cancelling`) becomes `cancelled` — nothing was written that is
    worth keeping — with its webhook event; one put back by a regenerate is left as it is."""
    fenced = (
        update(conversations).where(_our_lease()).values(lease_expires_at=None)
        .returning(conversations.c.id, conversations.c.user_id)
        .cte("fenced")
    )
    error = bindparam("reason", type_=Text)
    still_processing = messages.c.status == Status.PROCESSING
    given_back = (
        update(messages)
        .where(messages.c.id == bindparam("question_id"), status_in(messages.c.status, *STILL_GENERATED),
               select(fenced.c.id).exists())
        .values(status=case((still_processing, _status(bindparam("given_back_as", type_=STATUS))),
                            else_=_status(Status.CANCELLED)),
                error=case((still_processing, error)), enqueued_at=func.now(),
                not_before=func.now() + _seconds("retry_in"), updated_at=func.now())
        .returning(messages.c.id, messages.c.status)
        .cte("given_back")
    )
    outbox = events_of(
        select(*change(fenced.c.user_id, given_back.c.id, given_back.c.status,
                       error=case((given_back.c.status == Status.FAILED, error))))
        .select_from(fenced.join(given_back, true()))
        .where(status_in(given_back.c.status, Status.FAILED, Status.CANCELLED)))
    return (
        select(fenced.c.id, given_back.c.status.label("given_back"))
        .select_from(fenced.outerjoin(given_back, true()))
        .add_cte(*outbox)
    )


GIVE_BACK = _give_back()

RELEASE = update(conversations).where(_our_lease()).values(lease_expires_at=None)

# Renew a lease still held (a released one stays released: a renewal racing the commit must not
# hold the conversation up), and read whether the question was cancelled meanwhile.
_QUESTION_STATUS = select(messages.c.status).where(messages.c.id == bindparam("question_id"))
RENEW = (
    update(conversations).where(_our_lease(), conversations.c.lease_expires_at.is_not(None))
    .values(lease_expires_at=func.now() + _seconds("lease"))
    .returning(_QUESTION_STATUS.scalar_subquery().label("status"))
)

# Whether the question is still wanted (a cancel notification is only a hint: Postgres decides).
QUESTION_STATUS = _QUESTION_STATUS


def _next_pending() -> Any:
    """After a reply: the conversation's earliest unanswered message, marked as enqueued now."""
    m = messages.alias("m")
    earliest = (
        select(m.c.id).where(m.c.conversation_id == bindparam("conversation"), status_in(m.c.status, *PENDING))
        .order_by(m.c.seq).limit(1)
    )
    return (
        update(messages).where(messages.c.id == earliest.scalar_subquery()).values(enqueued_at=func.now())
        .returning(messages.c.id)
    )


NEXT_PENDING = _next_pending()


# ---- The sweeper's ------------------------------------------------------------------------------


def _revoke_expired_leases() -> Select[Any]:
    """Leases that ran out: their workers are presumed dead. Each is taken away (the fencing token
    moves on, so a worker that was only slow cannot commit), and its question is queued again with
    its place in the queue (the next claim counts another attempt) — or, if the user had stopped
    it, `cancelled` (what was written died with the worker), with its webhook event."""
    c = conversations.alias("c")
    run_out = (
        select(conversations.c.id).where(conversations.c.lease_expires_at < func.now())
        .order_by(conversations.c.lease_expires_at).limit(bindparam("most")).with_for_update(skip_locked=True)
    )
    expired = (
        update(c).where(c.c.id.in_(run_out)).values(lease_version=c.c.lease_version + 1, lease_expires_at=None)
        .returning(c.c.id, c.c.user_id)
        .cte("expired")
    )
    m = messages.alias("m")
    settled = (
        update(m).where(m.c.conversation_id == expired.c.id, status_in(m.c.status, *GENERATING))
        .values(status=case((m.c.status == Status.PROCESSING, _status(Status.QUEUED)), else_=_status(Status.CANCELLED)),
                updated_at=func.now())
        .returning(m.c.id, m.c.conversation_id, m.c.status, expired.c.user_id)
        .cte("settled")
    )
    outbox = events_of(select(*change(settled.c.user_id, settled.c.id, settled.c.status))
                       .where(status_in(settled.c.status, Status.CANCELLED)))
    return select(settled.c.id, settled.c.conversation_id, settled.c.status).add_cte(*outbox)


REVOKE_EXPIRED_LEASES = _revoke_expired_leases()


def _expire() -> Select[Any]:
    """Messages not started before their `expires_in` ran out: `expired`, never generated, with
    their webhook events; their conversations move on to the next message."""
    m = messages.alias("m")
    run_out = (
        select(messages.c.id).where(status_in(messages.c.status, Status.QUEUED), messages.c.expires_at <= func.now())
        .order_by(messages.c.expires_at).limit(bindparam("most")).with_for_update(skip_locked=True)
    )
    error = bindparam("reason", type_=Text)
    expired = (
        update(m).where(m.c.id.in_(run_out)).values(status=Status.EXPIRED, error=error, updated_at=func.now())
        .returning(m.c.id, m.c.conversation_id, m.c.user_id)
        .cte("expired")
    )
    outbox = events_of(select(*change(expired.c.user_id, expired.c.id, literal(Status.EXPIRED.value), error=error)))
    return select(expired.c.id, expired.c.conversation_id).add_cte(*outbox)


EXPIRE = _expire()


def _promote_aged_batch() -> Any:
    """Batch messages that have waited BATCH_AGE_SECONDS join the interactive lane, each as a new
    arrival of its user there: never starved for good, never ahead of users already waiting."""
    m = messages.alias("m")
    aged = (
        select(messages.c.id)
        .where(status_in(messages.c.status, Status.QUEUED), messages.c.lane == 1,
               messages.c.created_at < func.now() - _seconds("age"))
        .order_by(messages.c.created_at).limit(bindparam("most")).with_for_update(skip_locked=True)
    )
    batch_weight = select(shares.c.weight).where(shares.c.user_id == m.c.user_id, shares.c.lane == 1)
    return (
        update(m).where(m.c.id.in_(aged))
        .values(lane=0, fair_tag=func.next_fair_tag(m.c.user_id, literal(0, m.c.lane.type),
                                                    func.coalesce(batch_weight.scalar_subquery(), 1.0)))
        .returning(m.c.id)
    )


PROMOTE_AGED_BATCH = _promote_aged_batch()


# ---- The statements as SQL, for review ----------------------------------------------------------

# Each statement above as Postgres receives it (values the code fixes written out, values bound at
# run time as :name), kept in worker/claim_sql.sql: a change here shows up in review as the SQL it
# makes, and tests/unit/test_claims.py fails until the file is written again with
# `python -m worker.claim_sql`.
SQL_FILE = Path(__file__).with_name("claim_sql.sql")


def statements() -> dict[str, Executable]:
    """Every statement of this module by name (the capped claim and the plain one apart)."""
    named = {name: value for name, value in globals().items()
             if name.isupper() and not name.startswith("_") and isinstance(value, Executable)}
    named.update({f"CLAIM[capped={capped}]": statement for capped, statement in CLAIM.items()})
    return dict(sorted(named.items()))


def _literal(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, list | tuple):
        return ", ".join(_literal(item) for item in value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def readable(statement: Executable) -> str:
    """The statement's SQL for Postgres, with the values fixed in the code written out."""
    compiled = statement.compile(dialect=postgresql.dialect())

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        bound = compiled.binds.get(key)
        return f":{key}" if bound is not None and not bound.unique else _literal(compiled.params.get(key))

    return re.sub(r"%\((\w+)\)s", value, str(compiled)).strip()


def as_sql() -> str:
    header = ("-- The worker's statements (worker/claim_sql.py) as Postgres receives them; :name is bound at\n"
              "-- run time. Generated by `python -m worker.claim_sql`; tests/unit/test_claims.py checks it.\n")
    return header + "".join(f"\n-- {name}\n{readable(statement)};\n" for name, statement in statements().items())


if __name__ == "__main__":
    SQL_FILE.write_text(as_sql(), encoding="utf-8")
