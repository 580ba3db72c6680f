"""Server-Sent Events for one conversation, resumable on any web node.

`GET /api/v1/conversations/{cid}/events` (with `Last-Event-ID` or `?after=N`) streams:

- `event: message` with `id: <seq>` for every message whose seq is above the cursor, in order;
- `event: message` *without* an id when a message the stream already sent changes (a question
  becomes `processing`, `answered` or `failed`). An update re-sent with its own, older seq would
  move the client's Last-Event-ID backwards and replay everything after it on reconnect, so updates
  leave the cursor alone; a reconnecting client gets the current state of every unanswered
  question at or below its cursor first, so it misses no update either;
- `event: delta` (no id) with `{"message_id", "attempt", "index", "text"}` for each piece of a
  reply a streaming engine is still generating; the final `message` event follows the commit and
  is the truth (a new attempt after a crash sends its deltas from index 0: the dead attempt's text,
  which it continues). A `processing`
  question's `message` event carries `partial` (the text so far, and how many pieces it holds), and
  the stream sends only the pieces after it, in order: however a client joins, mid-reply or on
  another node, it gets every piece exactly once (a gap — a notification lost — is filled from the
  attempt's pieces in Redis);
- a `: heartbeat` comment every `SSE_HEARTBEAT_SECONDS`, so proxies keep the stream open.

Like a long-poll, the stream is a waiting request (admission.py: admitted, no database connection
held while it sleeps on its channels in wakeups.py) and re-reads Postgres when woken. It
ends after `STREAM_SECONDS`; EventSource reconnects with Last-Event-ID by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import structlog
from flask import Blueprint, Response, g, request, stream_with_context
from sqlalchemy import select

from models import UNFINISHED, Message
from models.coordination.messaging import read_pieces
from models.coordination.signals import conversation_channel, delta_channel
from models.representation import message_json
from models.sql.queries import messages_after, parse_uuid, replies_to

from ..auth import authenticate
from ..problems import Problem
from ..schemas import EventsQuery
from ..services import reader, release_db, services, use_wait_pool
from ..shown import conversation_or_404, partials, with_queue_positions
from ..spec import operation
from .admission import admission
from .longpoll import recheck_after
from .wakeups import wakeups

bp = Blueprint("events", __name__, url_prefix="/api/v1")
log = structlog.get_logger(__name__)
STREAM_SECONDS = 300.0
RECONNECT_MS = 2000


@bp.before_request
def _identify() -> None:
    authenticate()


def _cursor() -> int:
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    # isascii: str.isdigit() is also true for "²" and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise Problem(422, "Last-Event-ID / after: must be a message seq (a whole number)", slug="invalid-field")
    return int(raw)


def _frame(message: dict[str, Any], with_id: bool) -> str:
    head = f"id: {message['seq']}\n" if with_id else ""
    return f"{head}event: message\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"


# message id -> (attempt, pieces sent): where each reply being generated stands for this client.
Sent = dict[str, tuple[int, int]]


def _changes(conversation_id: Any, cursor: int, watched: dict[str, str], sent: Sent) -> tuple[list[str], int]:
    """Frames for what is new above `cursor` and for watched questions whose status moved."""
    session = reader()
    new = messages_after(session, conversation_id, cursor, None)
    moved = list(session.scalars(select(Message).where(Message.id.in_(list(watched))))) if watched else []
    # Above the cursor a question comes with the new ones; below it, only when its status moved.
    moved = [row for row in moved
             if row.status is not None and row.status.value != watched[str(row.id)] and row.seq <= cursor]
    replies = replies_to(session, [row.id for row in [*new, *moved]])
    written = partials([*moved, *new])
    shown = [(message_json(row, replies.get(row.id), written.get(row.id)), row, with_id)
             for row, with_id in [*((row, False) for row in moved), *((row, True) for row in new)]]
    with_queue_positions([message for message, _row, _with_id in shown])  # a queued one says where it stands
    frames = []
    for message, row, with_id in shown:
        frames.append(_frame(message, with_id=with_id))
        if with_id:
            cursor = row.seq
        if message.get("partial"):  # the client has the text so far: pieces continue after it
            sent[message["id"]] = (message["partial"]["attempt"], message["partial"]["pieces"])
    for row in [*moved, *new]:
        if row.status in UNFINISHED:
            watched[str(row.id)] = row.status.value
        else:
            watched.pop(str(row.id), None)
    release_db()
    return frames, cursor


def _delta(message_id: str, attempt: int, index: int, text: str) -> str:
    data = json.dumps({"message_id": message_id, "attempt": attempt, "index": index, "text": text},
                      separators=(",", ":"))
    return f"event: delta\ndata: {data}\n\n"


def _pieces(data: str, sent: Sent) -> list[str]:
    """The frames a published piece makes for this client: none when it has the piece already,
    the piece itself when it is the next one, or everything it is missing up to it."""
    try:
        piece = json.loads(data)
        message_id, attempt = piece["message_id"], int(piece["attempt"])
        index = int(piece["index"])
    except (ValueError, KeyError, TypeError):
        return []
    have_attempt, have = sent.get(message_id, (attempt, 0))
    if have_attempt != attempt:  # a new attempt is sent from its first piece (the text it continues)
        have = 0
    if index < have:
        return []
    if index == have:
        sent[message_id] = (attempt, have + 1)
        return [_delta(message_id, attempt, index, piece["text"])]
    missing = read_pieces(services().redis, message_id, attempt, have)
    sent[message_id] = (attempt, have + len(missing))
    return [_delta(message_id, attempt, have + offset, text) for offset, text in enumerate(missing)]


def _watch(watched: dict[str, str], data: str) -> None:
    """A question announced as changed is read at the next re-check, wherever it is."""
    try:
        message_id = parse_uuid(json.loads(data)["message_id"])
    except (ValueError, KeyError, TypeError):
        return
    if message_id is not None:
        watched.setdefault(str(message_id), "")


@bp.get("/conversations/<conversation_id>/events")
@operation("Server-Sent Events of a conversation, resumable with Last-Event-ID", query=EventsQuery,
           responses={200: "text/event-stream"}, headers={"Last-Event-ID": "the last seq received"})
def conversation_events(conversation_id: str) -> Response:
    cursor = _cursor()
    user, gate = g.user, admission()
    gate.enter(user)  # a stream is a waiting request: 503/429 past this node's limits, before any read
    try:
        use_wait_pool()
        # Only its id is kept: the stream holds it for minutes (memory per wait, BENCHMARKS.md).
        cid = conversation_or_404(conversation_id).id
        # Questions at or below the cursor that may still change: the client gets their state now.
        watched = {
            str(message_id): ""
            for message_id in reader().scalars(
                select(Message.id).where(
                    Message.conversation_id == cid, Message.seq <= cursor, Message.status.in_(UNFINISHED)
                )
            )
        }
    except BaseException:
        gate.leave(user)  # no stream: its place is free again (404, the database away, ...)
        raise
    release_db()
    heartbeat = services().settings.sse_heartbeat_seconds

    def stream() -> Iterator[str]:
        nonlocal cursor
        sent: Sent = {}
        deltas = delta_channel(cid)
        with wakeups().streaming(conversation_channel(cid), deltas) as waiter:
            use_wait_pool()
            yield f"retry: {RECONNECT_MS}\n\n"
            now = time.monotonic()
            ends, beat, recheck = now + STREAM_SECONDS, now + heartbeat, now
            while now < ends and not wakeups().draining:  # a leaving node ends its streams; clients resume
                if now >= recheck:
                    frames, cursor = _changes(cid, cursor, watched, sent)
                    yield from frames
                    recheck = time.monotonic() + recheck_after()
                if time.monotonic() >= beat:
                    yield ": heartbeat\n\n"
                    beat = time.monotonic() + heartbeat
                woke = waiter.event.wait(max(0.0, min(beat, recheck, ends) - time.monotonic()))
                waiter.event.clear()
                woken = waiter.take()
                # Streamed text goes through, each piece once; a change (or a wake-up with no
                # notification: the notifications were interrupted) means the truth is read again
                # now, including a question below the cursor that moved (a regenerate, a cancel).
                changed = False
                for channel, data in woken:
                    if channel == deltas:
                        yield from _pieces(data, sent)
                    else:
                        changed = True
                        _watch(watched, data)
                if changed or (woke and not woken):
                    recheck = time.monotonic()
                now = time.monotonic()

    response = Response(
        stream_with_context(stream()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # Called when the server is done with the response (ended, or the client went away), whether
    # or not the stream ever started.
    response.call_on_close(lambda: gate.leave(user))
    return response
