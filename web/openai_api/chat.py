"""`POST /v1/chat/completions`: OpenAI's Chat Completions over chatq's queue. The call's messages
are stored as a conversation of the user's (its earlier turns as they were, the last one a
question, queued like any other: fair share, the pool, quotas), and the answer is waited for —
whole, or streamed as `chat.completion.chunk` events while the worker writes it. The conversation is
`temporary` (deleted a day after its last message) unless the call says `"store": true`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Response, g, jsonify, request, stream_with_context
from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from models import Conversation, Lane, Message, Role, Status
from models.coordination.messaging import announce, read_partials, send_answer_job
from models.coordination.queue_figures import start_rate
from models.coordination.signals import conversation_channel, delta_channel, message_channel

from ..accept import Asked, Lifetime, accept_message, is_one_statement, remember_answer, reserve_key
from ..inputs import idempotency_of, json_body
from ..problems import Problem
from ..services import after_commit, release_db, services, transaction, use_wait_pool
from ..shown import committed_message, message_view
from ..spec import operation
from ..waiting.admission import admission, admitted
from ..waiting.longpoll import recheck_after, wait_for
from ..waiting.wakeups import wakeups
from ..writes import refuse_while_erasing
from . import bp
from .models import BUILTIN_MODEL
from .schemas import ChatCompletionIn, ChatCompletionOut, ChatMessageIn, OpenAIError

FINAL = frozenset({Status.ANSWERED.value, Status.FAILED.value, Status.CANCELLED.value, Status.EXPIRED.value})
WAIT_SLICE_SECONDS = 25.0  # one long-poll's wait; a completion waits as many as its answer takes
TITLE_CHARS = 60
PLACE_FOR_END_USER = text("SELECT place_for_end_user(:question, :end_user)")


def _text(message: ChatMessageIn, where: str) -> str:
    """A message's text: its string, or its text parts joined (an image or audio part is refused)."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for index, part in enumerate(message.content):
        if part.type not in ("text", "input_text", "output_text") or part.text is None:
            raise Problem(400, f"{where}.content[{index}]: chatq reads text parts only, not {part.type!r}",
                          slug="unsupported-field")
        texts.append(part.text)
    return "\n".join(texts)


def _turns(body: ChatCompletionIn) -> tuple[list[tuple[Role, str]], str]:
    """The conversation before the question (user and assistant turns; system and developer
    messages are not kept: docs/openai.md), and the question: the last message, the user's."""
    turns: list[tuple[Role, str]] = []
    for index, message in enumerate(body.messages):
        if message.role == "tool" or getattr(message, "tool_calls", None):
            raise Problem(400, f"messages[{index}]: tool calls and their results are not supported on "
                          "/v1/chat/completions yet", slug="unsupported-field")
        if message.role in ("user", "assistant"):
            turns.append((Role(message.role), _text(message, f"messages[{index}]")))
    if body.messages[-1].role != "user" or not turns:
        raise Problem(422, "messages: the last message must be the user's (the question to answer)",
                      slug="invalid-field")
    _role, question = turns.pop()
    if not question.strip():
        raise Problem(422, "messages[-1].content: must not be empty", slug="invalid-field")
    return turns, question


def start_conversation(session: Session, user: str, turns: list[tuple[Role, str]], title: str,
                       temporary: bool) -> uuid.UUID:
    """A conversation holding the turns before the question, numbered 1, 2, 3 …"""
    conversation_id = uuid.uuid4()
    session.execute(insert(Conversation).values(id=conversation_id, user_id=user, title=title, last_seq=len(turns),
                                                lease_version=0, temporary=temporary))
    turn_rows(session, conversation_id, user, turns, first_seq=1)
    return conversation_id


COPIED = ("role", "content", "tool_calls", "finish", "usage", "context", "model", "question_content", "pieces",
          "context_seq", "request_id")


def copy_conversation(session: Session, user: str, conversation_id: uuid.UUID, question_seq: int) -> uuid.UUID:
    """A new conversation of the user's holding a copy of this one up to its question `question_seq`
    and that question's current reply (a response continued from an earlier point: docs/openai.md),
    numbered 1, 2, 3 …; questions answered there read answered, the others cancelled."""
    source = session.get(Conversation, conversation_id)
    if source is None or source.user_id != user:  # deleted since the response was looked up
        raise Problem(404, "No such response.")
    reply_seq = session.scalar(select(Message.seq).where(
        Message.conversation_id == conversation_id, Message.superseded.is_(False),
        Message.reply_to_id == select(Message.id).where(Message.conversation_id == conversation_id,
                                                        Message.seq == question_seq).scalar_subquery()))
    kept = list(session.scalars(select(Message).where(
        Message.conversation_id == conversation_id, Message.superseded.is_(False),
        Message.seq <= (reply_seq or question_seq)).order_by(Message.seq)))
    copy = uuid.uuid4()
    session.execute(insert(Conversation).values(id=copy, user_id=user, title=source.title, last_seq=len(kept),
                                                lease_version=0, temporary=source.temporary))
    new_ids = {row.id: uuid.uuid4() for row in kept}
    answered = {row.reply_to_id for row in kept if row.reply_to_id is not None}
    rows = [{"id": new_ids[row.id], "conversation_id": copy, "user_id": user, "seq": seq, "attempts": 0,
             "reply_to_id": new_ids.get(row.reply_to_id) if row.reply_to_id else None,
             "status": (Status.ANSWERED if row.id in answered else Status.CANCELLED) if row.role is Role.USER
             else None, **{name: getattr(row, name) for name in COPIED}}
            for seq, row in enumerate(kept, start=1)]
    if rows:
        session.execute(insert(Message), rows)
    return copy


def turn_rows(session: Session, conversation_id: uuid.UUID, user: str, turns: list[tuple[Role, str]],
              first_seq: int) -> list[Message]:
    """Store turns as the conversation's messages `first_seq`, `first_seq` + 1 … (the caller has
    counted them into its `last_seq`): each user turn answered by the assistant turn after it, or
    never (`cancelled`: no answer is asked for). Returns them as stored (not in the session)."""
    rows: list[dict[str, Any]] = []
    for seq, (role, content) in enumerate(turns, start=first_seq):
        row = {"id": uuid.uuid4(), "conversation_id": conversation_id, "user_id": user, "seq": seq, "role": role,
               "content": content, "attempts": 0, "status": None, "reply_to_id": None}
        if role is Role.USER:
            row["status"] = Status.CANCELLED  # never answered here, unless an assistant turn follows
        elif rows and rows[-1]["role"] is Role.USER and rows[-1]["status"] is Status.CANCELLED:
            rows[-1]["status"] = Status.ANSWERED
            row["reply_to_id"] = rows[-1]["id"]
        rows.append(row)
    if rows:
        session.execute(insert(Message), rows)
    return [Message(**row) for row in rows]


def _ask(body: ChatCompletionIn) -> dict[str, Any]:
    """Store the call's conversation and question, queue it; the question as the API shows it."""
    if body.tools:
        raise Problem(400, "tools: function tools are not supported on /v1/chat/completions yet",
                      slug="unsupported-field")
    turns, question = _turns(body)
    return queue_question(turns, question, temporary=not body.store, flex=body.service_tier == "flex",
                          end_user=body.safety_identifier or body.user)


def queue_question(history: list[tuple[Role, str]], question: str, *, conversation_id: uuid.UUID | None = None,
                   temporary: bool, flex: bool, end_user: str | None = None,
                   kept: dict[str, Any] | None = None, copy_of: tuple[uuid.UUID, int] | None = None) -> dict[str, Any]:
    """Store a /v1 call's question — in the conversation it continues, or in a new one holding
    `history` (`temporary`: deleted a day after its last message) — and queue it like any message
    (the job is sent once it committed); the question as the API shows it. With an
    Idempotency-Key a retry stores nothing and shows the first call's question as it is now."""
    settings, redis = services().settings, services().redis
    asked = Asked(lane=Lane.BATCH if flex else Lane.INTERACTIVE, weight=settings.weight_of(g.tier))
    idempotency = idempotency_of(request.path, request.get_json(silent=True) or {})
    # Anything written before the question (a key, a copy, the history) waits for no erasure; a
    # plain question is stored as /api/v1 stores one, in one statement (which refuses an erasure).
    writes_first = idempotency is not None or copy_of is not None or (conversation_id is None and bool(history))
    one_statement = not writes_first and not kept and end_user is None and is_one_statement(settings, None, "enqueue")
    with transaction(autocommit=one_statement) as session:
        if writes_first:
            refuse_while_erasing(session, g.user)
        stored = reserve_key(session, g.user, *idempotency) if idempotency is not None else None
        if stored is not None:  # a retry: the first call's question (reserved before anything is stored)
            g.idempotent_replayed = True
            replayed = uuid.UUID(stored.body["message"]["id"])
        if copy_of is not None and stored is None:
            conversation_id = copy_conversation(session, g.user, *copy_of)
        elif conversation_id is None and history and stored is None:
            conversation_id = start_conversation(session, g.user, history, " ".join(question.split())[:TITLE_CHARS],
                                                 temporary=temporary)
        if stored is None:
            accepted = accept_message(session, user=g.user, content=question,
                                      conversation_id=str(conversation_id) if conversation_id else None,
                                      request_id=g.request_id, idempotency=None, settings=settings, asked=asked,
                                      lifetime=Lifetime(temporary=temporary), start_rate=lambda: start_rate(redis))
            conversation_id = uuid.UUID(accepted.body["conversation_id"])
            if kept:  # what a /v1/responses call asked of the answer, for the worker, and the app's metadata
                session.execute(update(Message).where(Message.id == accepted.message_id).values(**kept))
            if end_user is not None:  # its place among the user's, by its end user's fair share
                session.execute(PLACE_FOR_END_USER, {"question": accepted.message_id, "end_user": end_user})
            if idempotency is not None:
                remember_answer(session, g.user, idempotency[0], accepted.body)
            after_commit(send_answer_job, services().producer, accepted.message_id, g.request_id)
            after_commit(announce, redis, conversation_id, accepted.message_id, Status.QUEUED.value)
    if stored is not None:
        return message_view(replayed)[0]
    return accepted.body["message"]


def _completion_id(question: dict[str, Any]) -> str:
    return f"chatcmpl-{uuid.UUID(question['id']).hex}"


def _usage(reply: dict[str, Any]) -> dict[str, int]:
    usage = reply.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _not_answered(question: dict[str, Any]) -> Problem:
    return Problem(502, f"The message was not answered ({question['status']}): {question.get('error') or 'unknown'}",
                   slug="not-answered")


def _answered(question: dict[str, Any], created: int) -> dict[str, Any]:
    if question["status"] in (Status.FAILED.value, Status.EXPIRED.value):
        raise _not_answered(question)
    reply = question.get("reply") or {}
    return {
        "id": _completion_id(question), "object": "chat.completion", "created": created,
        "model": reply.get("model") or BUILTIN_MODEL, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.get("content") or "",
                                             "refusal": None},
                     "finish_reason": "length" if reply.get("finish") == "length" else "stop", "logprobs": None}],
        "usage": _usage(reply),
    }


@bp.post("/chat/completions")
@operation("OpenAI: Chat Completions — the messages stored, queued and answered like any message",
           body=ChatCompletionIn, responses={200: (ChatCompletionOut, "text/event-stream")}, errors=OpenAIError)
def chat_completions() -> Response:
    body = json_body(ChatCompletionIn)
    created = int(time.time())
    if body.stream:
        return _streamed(body, created)
    # A waiting request: its place is taken before anything is stored, so that a node (or a user)
    # at its limit refuses the call (503/429) rather than answer an error for a message it queued.
    with admitted():
        return jsonify(_answered(answer_of(_ask(body)), created))


def answer_of(question: dict[str, Any]) -> dict[str, Any]:
    """The question once final, waited for in as many long-polls as it takes; the caller holds the
    request's place among the waiting (`admitted`)."""
    ident = uuid.UUID(question["id"])
    while question["status"] not in FINAL:
        question = wait_for(message_channel(ident), lambda: message_view(ident), WAIT_SLICE_SECONDS,
                            answer=committed_message(ident), admit=False)
    return question


def _event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _streamed(body: ChatCompletionIn, created: int) -> Response:
    """The answer as `chat.completion.chunk` events: each piece as the worker writes it (from the
    conversation's delta channel, the text so far read from Redis), then the finish, then the usage
    when asked for, then `[DONE]`. A waiting request like an event stream (admitted before the
    question is stored, no database connection held while it sleeps)."""
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    user, gate = g.user, admission()
    gate.enter(user)
    try:
        question = _ask(body)
    except BaseException:
        gate.leave(user)
        raise
    ident, conversation = uuid.UUID(question["id"]), uuid.UUID(question["conversation_id"])
    redis = services().redis

    def chunk(delta: dict[str, Any], finish: str | None = None, model: str = BUILTIN_MODEL) -> str:
        return _event({"id": _completion_id(question), "object": "chat.completion.chunk", "created": created,
                       "model": model, "system_fingerprint": None,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    def stream() -> Iterator[str]:
        sent, attempt, recheck = "", None, 0.0
        yield chunk({"role": "assistant", "content": ""})
        deltas = delta_channel(conversation)
        with wakeups().streaming(conversation_channel(conversation), deltas) as inbox:
            use_wait_pool()
            while True:
                text = None
                if time.monotonic() >= recheck:  # the truth, from Postgres: final, or the text so far
                    shown, final = message_view(ident)
                    release_db()
                    if final:
                        yield from finish(shown, sent)
                        return
                    partial = shown.get("partial") or {}
                    attempt, text = partial.get("attempt", attempt), partial.get("text")
                    recheck = time.monotonic() + recheck_after()
                inbox.event.wait(max(0.0, recheck - time.monotonic()))
                inbox.event.clear()
                for channel, data in inbox.take():
                    if channel != deltas:
                        recheck = 0.0  # a change of status: read it now
                        continue
                    piece = json.loads(data)
                    if piece.get("message_id") == str(ident):
                        attempt = piece.get("attempt", attempt)
                if attempt is not None and text is None:
                    text = read_partials(redis, {ident: attempt}).get(ident)
                    text = text.text if text is not None else None
                # A new attempt (after a crash) starts its text again: nothing is sent until it
                # passes what the client already has.
                if text and text.startswith(sent) and len(text) > len(sent):
                    yield chunk({"content": text[len(sent):]})
                    sent = text

    def finish(shown: dict[str, Any], sent: str) -> Iterator[str]:
        if shown["status"] in (Status.FAILED.value, Status.EXPIRED.value):
            problem = _not_answered(shown)
            yield _event({"error": {"message": problem.detail, "type": "server_error", "param": None,
                                    "code": problem.slug}})
            return
        reply = shown.get("reply") or {}
        content, model = reply.get("content") or "", reply.get("model") or BUILTIN_MODEL
        if content.startswith(sent) and len(content) > len(sent):
            yield chunk({"content": content[len(sent):]}, model=model)
        yield chunk({}, "length" if reply.get("finish") == "length" else "stop", model=model)
        if include_usage:
            yield _event({"id": _completion_id(question), "object": "chat.completion.chunk", "created": created,
                          "model": model, "system_fingerprint": None, "choices": [], "usage": _usage(reply)})
        yield _event("[DONE]")

    response = Response(stream_with_context(stream()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(lambda: gate.leave(user))
    return response

