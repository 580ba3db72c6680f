"""A user's data (contract: "A user's data"; docs/api.md): search their messages, export everything
of theirs, and erase them. Each sees only the signed-in user's rows: every statement is keyed by
the user, never by an id alone."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import uuid
from collections import namedtuple
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g
from pydantic import BaseModel
from sqlalchemy import Text, Uuid, and_, bindparam, cast, func, literal_column, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import ApiKey, Conversation, DailyUsage, Erasure, Message, Role, Status, Task, WebhookEndpoint
from models.coordination.messaging import announce, request_cancel, send_erasure_job
from models.representation import message_out, version_out
from models.sql.erasure import LAST_ERASURE_IF_NOTHING_SINCE, LOCK_OUT_WRITES, user_digest
from models.sql.queries import QUESTION_SHOWN, REPLY_SHOWN, ShownReply, parse_uuid
from models.sql.stopping import STOP_USERS_QUESTIONS

from . import schemas
from .auth import authenticate
from .inputs import query
from .problems import Problem
from .serialize import conversation_json, task_json
from .services import after_commit, reader, release_db, services, transaction
from .spec import operation
from .waiting.admission import exports, searches
from .webhooks import endpoint_json

bp = Blueprint("user_data", __name__, url_prefix="/api/v1")
EXPORT_FORMAT = "chatq.export/1"
EXPORT_PAGE = 1000  # rows fetched from Postgres at a time: the export's memory, whatever its size
EXPORT_CHUNK = 64 * 1024  # bytes written to the client at a time


@bp.before_request
def _identify() -> None:
    authenticate()


# Search ----------------------------------------------------------------------------------------

# ts_headline marks the matched words with two control characters, which the snippet's own text
# cannot hold (they are taken out of it first); the marks become offsets, and the snippet stays
# plain text that no client has to escape.
_START, _STOP = "\x02", "\x03"
_SEARCH = """
    SELECT m.id, m.conversation_id, c.title, m.seq, m.role::text AS role, m.created_at, {rank} AS rank,
           ts_headline(q.config, translate(m.content, E'\\x02\\x03', ''), q.query,
                       'StartSel=' || chr(2) || ', StopSel=' || chr(3)
                       || ', MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=" … "') AS snippet
      FROM (SELECT CAST(:config AS regconfig) AS config,
                   websearch_to_tsquery(CAST(:config AS regconfig), :q) AS query) AS q
      JOIN messages AS m ON m.search @@ q.query
      JOIN conversations AS c ON c.id = m.conversation_id
     WHERE m.user_id = :user AND NOT m.superseded {after}
     ORDER BY {order}
     LIMIT :limit
"""
_RANK = "ts_rank_cd(m.search, q.query)::float8"
# order -> (the statement, and its keyset condition for a cursor); built once.
_SEARCHES = {
    (order, after): text(_SEARCH.format(
        rank=_RANK,
        order="m.created_at DESC, m.id DESC" if order == "newest" else "rank DESC, m.id DESC",
        after="" if not after else
        "AND (m.created_at, m.id) < (:at, :id)" if order == "newest" else f"AND ({_RANK}, m.id) < (:rank, :id)",
    ))
    for order in ("newest", "relevance") for after in (False, True)
}


def _highlighted(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """The snippet without ts_headline's marks, and where the marked words are in it."""
    text_, spans, start = [], [], 0
    length = 0
    for char in marked:
        if char == _START:
            start = length
        elif char == _STOP:
            spans.append((start, length))
        else:
            text_.append(char)
            length += 1
    return "".join(text_), spans


def _search_cursor(order: str, row: Any) -> str:
    key = row.created_at.isoformat() if order == "newest" else repr(row.rank)
    return base64.urlsafe_b64encode(f"{order}|{key}|{row.id}".encode()).decode().rstrip("=")


def _after(order: str, cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, key, ident = raw.split("|")
        parsed = parse_uuid(ident)
        if kind != order or parsed is None:
            raise ValueError(raw)
        return {"id": parsed, **({"at": datetime.fromisoformat(key)} if order == "newest" else {"rank": float(key)})}
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(422, "cursor: not a cursor this search handed out (with this order)",
                      slug="invalid-field") from None


@bp.get("/search")
@operation("Find the user's messages (questions and replies) by their words, newest or best match first",
           query=schemas.SearchQuery, responses={200: schemas.SearchResults})
def search() -> dict[str, Any]:
    params = query(schemas.SearchQuery)
    bound: dict[str, Any] = {"config": services().settings.search_config, "q": params.q, "user": g.user,
                             "limit": params.limit + 1}
    if params.cursor:
        bound.update(_after(params.order, params.cursor))
    user, gate = g.user, searches()
    gate.enter(user)  # 503/429 past this node's searches, before a connection is taken
    try:
        rows = reader().execute(_SEARCHES[params.order, bool(params.cursor)], bound).all()
    finally:
        release_db()  # the connection goes back to the pool before the place is given up
        gate.leave(user)
    more, rows = len(rows) > params.limit, rows[: params.limit]
    items = []
    for row in rows:
        snippet, highlights = _highlighted(row.snippet)
        items.append(schemas.SearchHit(
            conversation_id=str(row.conversation_id), conversation_title=row.title, message_id=str(row.id),
            seq=row.seq, role=row.role, created_at=row.created_at, snippet=snippet, highlights=highlights,
        ).model_dump(mode="json"))
    return {"items": items, "next_cursor": _search_cursor(params.order, rows[-1]) if more else None}


# Export ----------------------------------------------------------------------------------------


@bp.get("/export")
@operation("Everything of the user's, streamed as NDJSON (docs/api.md: one record a line)",
           responses={200: "application/x-ndjson"})
def export() -> Response:
    user, gate = g.user, exports()
    gate.enter(user)  # 503/429 past this node's exports, before a connection is taken
    try:
        session = services().sessions()  # the stream's own, held for as long as it runs, then closed
        lines = _export_lines(session, user, leave=lambda: gate.leave(user))
    except BaseException:
        gate.leave(user)
        raise
    first = next(lines)  # the snapshot is taken here: Postgres away is a 503, not a broken stream
    headers = {"Content-Disposition": 'attachment; filename="chatq-export.ndjson"',
               "X-Accel-Buffering": "no", "Cache-Control": "no-store"}
    response = Response(itertools.chain([first], lines), mimetype="application/x-ndjson", headers=headers)
    response.call_on_close(lines.close)  # a client gone mid-stream frees the connection and the place now
    return response


def _line(kind: str, record: dict[str, Any] | BaseModel) -> bytes:
    """One record: {"type": kind, ...its fields}. A schema's model is written as JSON by pydantic
    itself (in Rust: the export's messages cost half as much as through a dict and json.dumps)."""
    if isinstance(record, BaseModel):
        return b'{"type":"' + kind.encode() + b'",' + record.__pydantic_serializer__.to_json(record)[1:] + b"\n"
    return (json.dumps({"type": kind, **record}, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _export_lines(session: Session, user: str, leave: Callable[[], None]) -> Generator[bytes, None, None]:
    """One snapshot of the user's data (REPEATABLE READ: a reply committed mid-export is in it
    whole or not at all), fetched EXPORT_PAGE rows at a time from server-side cursors; `leave` is
    called when it ends, however it ends."""
    counts: dict[str, int] = {}
    streamed = {"stream_results": True, "yield_per": EXPORT_PAGE}
    try:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
        # Every row of a cursor is read: plan for all of them. Postgres plans a cursor for its
        # first tenth by default, and at scale picked an ordered walk of the whole table's index.
        session.execute(text("SET LOCAL cursor_tuple_fraction = 1"))
        yield _line("export", {"format": EXPORT_FORMAT, "user": user,
                               "exported_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")})
        # Written out in chunks of about EXPORT_CHUNK bytes: a line at a time was a socket write
        # (and a gevent switch) per record.
        chunk: list[bytes] = []
        size = 0
        for kind, rows in _records(session, user, streamed):
            for record in rows:
                counts[kind] = counts.get(kind, 0) + 1
                line = _line(kind, record)
                chunk.append(line)
                size += len(line)
                if size >= EXPORT_CHUNK:
                    yield b"".join(chunk)
                    chunk, size = [], 0
        chunk.append(_line("end", {"records": counts}))
        yield b"".join(chunk)
    finally:
        session.close()
        leave()


# The export's messages and reply versions: what the API shows of them, as light rows (not ORM
# entities, a large part of the export's time), each kind one streamed statement over all of the
# user's rows (a statement per conversation cost a round trip per FETCH; BENCHMARKS.md, "A user's
# data", has the figures). A message row carries the columns of both roles; its current reply's
# follow it.
_messages = Message.__table__
_other = _messages.alias("other")
_ANY_SHOWN = (*QUESTION_SHOWN, *(name for name in REPLY_SHOWN if name not in QUESTION_SHOWN))
_ShownMessage = namedtuple("_ShownMessage", _ANY_SHOWN)  # type: ignore[misc]
_ShownVersion = namedtuple("_ShownVersion", (*REPLY_SHOWN, "question_content"))  # type: ignore[misc]


def _shown(table: Any, names: tuple[str, ...]) -> list[Any]:
    """The columns, ids read as text: the records write them as text, and psycopg building a UUID
    for each id only for it to be written out again slowed the export (BENCHMARKS.md, "A user's data")."""
    return [cast(table.c[name], Text).label(name) if isinstance(table.c[name].type, Uuid) else table.c[name]
            for name in names]


_EXPORTED_MESSAGES = (
    select(*_shown(_messages, _ANY_SHOWN), *_shown(_other, REPLY_SHOWN))
    # The reply side is the user's rows too (replies carry the user): otherwise Postgres joined
    # against every reply in the table (7.8 MB/s at 910,000 messages, 20 at 118,000).
    .select_from(_messages.outerjoin(_other, and_(_other.c.reply_to_id == _messages.c.id,
                                                  _other.c.superseded.is_(False),
                                                  _other.c.user_id == bindparam("user"))))
    .where(_messages.c.user_id == bindparam("user"))
    .order_by(_messages.c.conversation_id, _messages.c.seq)
)
_EXPORTED_VERSIONS = (  # each version with the question's text it answered
    select(*_shown(_messages, REPLY_SHOWN), func.coalesce(_messages.c.question_content, _other.c.content))
    .select_from(_messages.join(_other, and_(_other.c.id == _messages.c.reply_to_id,
                                             _other.c.user_id == bindparam("user"))))
    .where(_messages.c.user_id == bindparam("user"), _messages.c.role == Role.ASSISTANT)
    .order_by(_messages.c.conversation_id, _messages.c.seq)
)


def _records(session: Session, user: str,
             streamed: dict[str, Any]) -> Iterator[tuple[str, Iterator[dict[str, Any] | BaseModel]]]:
    """The records, kind by kind."""
    conversations = session.scalars(select(Conversation).where(Conversation.user_id == user)
                                    .order_by(Conversation.created_at, Conversation.id), execution_options=streamed)
    # With what an app attached through /v1/conversations, when it did.
    yield "conversation", ({**conversation_json(row), **({"metadata": row.app_metadata} if row.app_metadata else {})}
                           for row in conversations)
    connection = session.connection().execution_options(**streamed)
    # Each message as GET /conversations/{cid}/messages lists it (a question's current reply within) ...
    split = len(_ANY_SHOWN)
    messages = connection.execute(_EXPORTED_MESSAGES, {"user": user})
    yield "message", (message_out(_ShownMessage._make(row[:split]),  # type: ignore[arg-type]
                                  ShownReply._make(row[split:]) if row[split] is not None else None)
                      for row in messages)
    # ... and every version of every reply, as GET /messages/{mid}/replies shows them.
    versions = (_ShownVersion._make(row) for row in connection.execute(_EXPORTED_VERSIONS, {"user": user}))
    yield "reply", (version_out(row, row) for row in versions)  # type: ignore[arg-type]
    tasks = session.scalars(select(Task).where(Task.user_id == user).order_by(Task.created_at, Task.id),
                            execution_options=streamed)
    yield "task", (task_json(row) for row in tasks)
    usage = session.scalars(select(DailyUsage).where(DailyUsage.user_id == user).order_by(DailyUsage.day))
    yield "usage", ({"day": row.day.isoformat(), "messages": row.messages, "prompt_tokens": row.prompt_tokens,
                     "completion_tokens": row.completion_tokens} for row in usage)
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.user_id == user)
                                .order_by(WebhookEndpoint.created_at))
    yield "webhook_endpoint", (endpoint_json(row) for row in endpoints)  # never their secrets
    keys = session.scalars(select(ApiKey).where(ApiKey.user_id == user).order_by(ApiKey.created_at, ApiKey.id))
    yield "api_key", ({"id": str(row.id), "name": row.name, "created_at": row.created_at.isoformat()}
                      for row in keys)  # never the keys (only their hashes are kept)


# Erasure ---------------------------------------------------------------------------------------


def _erasure_json(row: Any) -> dict[str, Any]:
    return schemas.ErasureOut(id=str(row.id), status="erased" if row.finished_at else "erasing",
                              requested_at=row.requested_at, finished_at=row.finished_at,
                              erased=row.erased or {}).model_dump(mode="json")


@bp.delete("/me")
@operation("Erase the user everywhere: answered at once, carried out in the background",
           responses={202: schemas.ErasureOut})
def erase_me() -> Response:
    settings, redis = services().settings, services().redis
    with transaction() as session:
        # No write of the user's is under way once this lock is held, and every later one sees the
        # erasure recorded here and is refused until it has finished (models/sql/erasure.py).
        session.execute(LOCK_OUT_WRITES, {"user": g.user})
        digest = user_digest(settings, g.user)
        # A repeat once the erasure has finished, with nothing stored since: its answer, and no
        # new erasure (each would scan Redis for the user's rate-limit keys).
        finished = session.execute(LAST_ERASURE_IF_NOTHING_SINCE, {"user": g.user, "digest": digest}).first()
        if finished is not None:
            return _erasure_response(finished)
        # One erasure runs per user (uq_erasures_running): a repeated DELETE gets the one under way
        # (the no-op update locks it, so it cannot finish before this transaction has committed).
        # `xmax = 0` is true of a row this statement inserted.
        inserted = pg_insert(Erasure).values(id=uuid.uuid4(), user_id=g.user, user_digest=digest)
        erasure = session.execute(
            inserted.on_conflict_do_update(index_elements=[Erasure.user_id], index_where=Erasure.finished_at.is_(None),
                                           set_={"user_id": inserted.excluded.user_id})
            .returning(Erasure.id, Erasure.requested_at, Erasure.finished_at, Erasure.erased,
                       literal_column("xmax = 0").label("started"))).one()
        # Generations in flight stop first: queued questions are cancelled, generated ones told to stop.
        stopped = session.execute(STOP_USERS_QUESTIONS, {"user": g.user}).all()
        after_commit(request_cancel, redis, [row.id for row in stopped if row.status is Status.CANCELLING])
        for row in stopped:
            after_commit(announce, redis, row.conversation_id, row.id, row.status)
        if erasure.started:
            after_commit(send_erasure_job, services().producer, erasure.id)
    return _erasure_response(erasure)


def _erasure_response(erasure: Any) -> Response:
    response = Response(json.dumps(_erasure_json(erasure)), status=202, mimetype="application/json")
    response.headers["Location"] = f"/api/v1/erasures/{erasure.id}"
    return response


@bp.get("/erasures/<erasure_id>")
@operation("Where an erasure of the user stands, and how much it erased", responses={200: schemas.ErasureOut})
def get_erasure(erasure_id: str) -> dict[str, Any]:
    ident = parse_uuid(erasure_id)
    digest = user_digest(services().settings, g.user)
    row = reader().scalars(select(Erasure).where(Erasure.id == ident, Erasure.user_digest == digest)) \
        .one_or_none() if ident is not None else None
    if row is None:
        raise Problem(404, "No such erasure.")
    return _erasure_json(row)

