"""`/v1/responses`: OpenAI's Responses API over chatq's questions. A response is one question of
the user's and its reply (`resp_` and the question's id); its conversation is a chatq
conversation (`conv_` and its id), read and continued on either API. `background: true` answers at
once, `queued`; without it the call waits for the answer. `previous_response_id` continues that
response's conversation (when it is the conversation's latest question); `conversation` names one.

`stream: true`, and `GET /v1/responses/{id}?stream=true&starting_after=N`, send the response's
events (events.py numbers them), live until it ends, on any node, for as long as it is kept. A
response from an earlier point of its conversation starts a copy of it; the app's function tools,
`instructions` and `max_output_tokens` go to a model server with the question; docs/openai.md
says field by field what is honoured.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Response, g, jsonify, request, stream_with_context
from sqlalchemy import and_, bindparam, delete, func, select

from models import FINAL as FINAL_STATUSES
from models import Conversation, Message, Role, Status
from models.coordination.messaging import WrittenSoFar, read_pieces
from models.coordination.signals import conversation_channel, delta_channel
from models.representation import message_json
from models.sql.queries import QUESTION_SHOWN, REPLY_SHOWN, ShownQuestion, ShownReply

from ..control import cancel_question
from ..inputs import json_body
from ..problems import Problem
from ..services import reader, release_db, services, transaction, use_wait_pool
from ..shown import with_queue_positions
from ..spec import operation
from ..waiting.admission import admission, admitted
from ..waiting.longpoll import recheck_after
from ..waiting.wakeups import wakeups
from . import bp
from .chat import answer_of, queue_question
from .events import FIRST_DELTA, Progress, events_after, split, sse
from .items import conversation_id, input_turns, parsed, reply_item_id, response_id
from .models import BUILTIN_MODEL
from .schemas import InputItemList, OpenAIError, ResponseIn, ResponseOut

FINAL = frozenset(status.value for status in FINAL_STATUSES)
# chatq's statuses as OpenAI's: a question being generated (or stopping) is in progress.
STATUSES = {"queued": "queued", "processing": "in_progress", "cancelling": "in_progress", "answered": "completed",
            "failed": "failed", "expired": "failed", "cancelled": "cancelled"}


def _epoch(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


def as_response(question: dict[str, Any], asked: Asked | None = None, *,
                background: bool = False) -> dict[str, Any]:
    """A chatq question (as the API shows it) as an OpenAI Response, with what its call asked."""
    asked = asked or Asked()
    reply = question.get("reply") or {}
    status = STATUSES[question["status"]]
    if status == "completed" and reply.get("finish") == "length":
        status = "incomplete"
    text = reply.get("content") if reply else (question.get("partial") or {}).get("text")
    output = []
    if text:
        output.append({"type": "message", "id": reply_item_id(question["id"]), "role": "assistant",
                       "status": "completed" if reply else "in_progress",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]})
    output += _function_calls(reply)
    usage = reply.get("usage") or {}
    tokens_in, tokens_out = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    failed = question["status"] in ("failed", "expired")
    body = {
        "id": response_id(question["id"]), "object": "response", "created_at": _epoch(question["created_at"]),
        "status": status, "background": background, "model": reply.get("model") or BUILTIN_MODEL,
        "output": output, "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out,
                                    "total_tokens": tokens_in + tokens_out,
                                    "input_tokens_details": {"cached_tokens": 0},
                                    "output_tokens_details": {"reasoning_tokens": 0}},
        "error": {"code": "server_error", "message": question.get("error") or question["status"]} if failed else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "conversation": {"id": conversation_id(question["conversation_id"])},
        "instructions": asked.options.get("instructions"), "metadata": asked.metadata,
        "tools": asked.options.get("responses_tools", []), "tool_choice": asked.options.get("responses_tool_choice",
                                                                                          "auto"),
        "max_output_tokens": asked.options.get("max_output_tokens"), "parallel_tool_calls": True,
        "temperature": None, "top_p": None, "text": {"format": {"type": "text"}}, "store": True,
    }
    if question.get("queue") is not None:
        body["queue"] = question["queue"]  # chatq's: how many start before it, and when it should
    return body


@dataclass(frozen=True)
class Asked:
    """What a response's call asked that the question's row keeps: its options (as the worker
    reads them, and as the call gave them) and the app's metadata."""

    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)  # of the app's function calls it answers


def _function_calls(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's calls of the app's own tools as function_call items; `call_id` is the id the
    model was shown the call by (worker/engine/openai_compat.py call_id): the app answers it."""
    calls = []
    for index, call in enumerate(reply.get("tool_calls") or []):
        if call.get("client"):
            ident = f"call_{reply['seq']}_{index}"
            calls.append({"type": "function_call", "id": f"fc_{uuid.UUID(reply['id']).hex}_{index}",
                          "call_id": ident, "name": call["name"], "arguments": json.dumps(call.get("arguments", {})),
                          "status": "completed"})
    return calls


def _app_tools(body: ResponseIn) -> dict[str, Any]:
    """The call's function tools and tool_choice, as the worker sends them to a model server (and
    as the call gave them, to show back); refused with the built-in engine, which runs its own
    tools only, and for any tool that is not a function."""
    if not body.tools:
        return {}
    if services().settings.engine == "builtin":
        raise Problem(400, "tools: the built-in assistant calls its own tools only; function tools are sent to "
                      "a model server (ENGINE=openai)", slug="unsupported-field")
    tools = []
    for index, tool in enumerate(body.tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise Problem(400, f"tools[{index}]: chatq takes function tools (with a name) only, not "
                          f"{tool.get('type')!r}", slug="unsupported-field")
        tools.append({"type": "function", "function": {key: tool[key] for key in ("name", "description", "parameters")
                                                       if key in tool}})
    options: dict[str, Any] = {"tools": tools, "responses_tools": body.tools}
    choice = body.tool_choice
    if choice is not None:
        options["responses_tool_choice"] = choice
        options["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name")}}
                                  if isinstance(choice, dict) and choice.get("type") == "function" else choice)
    return options


def _function_outputs(body: ResponseIn) -> list[dict[str, Any]]:
    """The outputs of the app's function calls the input carries (then it carries nothing else)."""
    if isinstance(body.input, str):
        return []
    outputs = [item for item in body.input if item.get("type") == "function_call_output"]
    if not outputs:
        return []
    if len(outputs) != len(body.input):
        raise Problem(400, "input: function_call_output items come alone, answering the calls of "
                      "previous_response_id", slug="unsupported-field")
    if body.previous_response_id is None:
        raise Problem(400, "previous_response_id: function_call_output items answer the calls of a previous "
                      "response: name it", slug="unsupported-field")
    for index, item in enumerate(outputs):
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
            raise Problem(422, f"input[{index}]: a function_call_output has a call_id and an output (text)",
                          slug="invalid-field")
    previous = parsed(body.previous_response_id, "resp_", "response")
    calls = {call["call_id"] for call in _function_calls(
        _read(previous, queue=False).shown.get("reply") or {})}
    unknown = [item["call_id"] for item in outputs if item["call_id"] not in calls]
    if unknown:
        raise Problem(400, f"input: no call of the previous response has call_id {unknown[0]!r}",
                      slug="unsupported-field")
    return [{"call_id": item["call_id"], "output": item["output"]} for item in outputs]


@dataclass(frozen=True)
class Fork:
    """A response continues an earlier point of a conversation: a copy of it up to that question
    (and its reply) is made in the transaction that stores the new question."""

    conversation_id: uuid.UUID
    question_seq: int


_later = Message.__table__.alias("later")
# A question of the user's, and its conversation's latest question's seq.
_WITH_LATEST = select(Message.conversation_id, Message.seq, Message.status, select(func.max(_later.c.seq)).where(
    _later.c.conversation_id == Message.conversation_id, _later.c.role == Role.USER).scalar_subquery().label("latest")
).where(Message.id == bindparam("question"), Message.user_id == bindparam("user"), Message.role == Role.USER)


def _continued(previous: str | None, conversation: str | dict[str, Any] | None) -> uuid.UUID | Fork | None:
    """The chatq conversation a response continues: its previous response's (when that is the
    conversation's latest question; else a copy up to it) or the one named (its id, or `{"id"}`);
    None for a new one."""
    if isinstance(conversation, dict):
        conversation = str(conversation.get("id") or "")
    if previous is not None and conversation is not None:
        raise Problem(400, "conversation: give previous_response_id or conversation, not both",
                      slug="unsupported-field")
    if conversation is not None:
        conversation_id = parsed(conversation, "conv_", "conversation")
        if reader().scalar(select(Conversation.id).where(Conversation.id == conversation_id,
                                                         Conversation.user_id == g.user)) is None:
            raise Problem(404, "No such conversation.")
        return conversation_id
    if previous is None:
        return None
    question = reader().execute(_WITH_LATEST, {"question": parsed(previous, "resp_", "response"),
                                               "user": g.user}).first()
    if question is None:
        raise Problem(404, "No such response.")
    if question.latest == question.seq:
        return question.conversation_id
    if question.status.value not in FINAL:
        raise Problem(400, "previous_response_id: that response is not finished, and later ones follow it; "
                      "continue from it once it is", slug="unsupported-field")
    return Fork(question.conversation_id, question.seq)


@bp.post("/responses")
@operation("OpenAI: create a response — queued like any message; background answers at once",
           body=ResponseIn, responses={200: (ResponseOut, "text/event-stream")}, errors=OpenAIError)
def create_response() -> Response:
    body = json_body(ResponseIn)
    options = _app_tools(body)
    options.update({name: getattr(body, name) for name in ("instructions", "max_output_tokens")
                    if getattr(body, name) is not None})
    outputs = _function_outputs(body)
    # The outputs of the app's function calls are the question; its text says what they were.
    turns = [(Role.USER, "\n".join(o["output"] for o in outputs)[:8000] or "(no output)")] if outputs \
        else input_turns(body.input)
    if not turns or turns[-1][0] is not Role.USER or not turns[-1][1].strip():
        raise Problem(422, "input: the last item must be the user's text (the question to answer)",
                      slug="invalid-field")
    if len(turns[-1][1]) > 8000:
        raise Problem(422, "input: the question may be at most 8000 characters", slug="invalid-field")
    history, (_role, question) = turns[:-1], turns[-1]
    conversation_id = _continued(body.previous_response_id, body.conversation)
    if conversation_id is not None and history:
        raise Problem(400, "input: a response that continues a conversation takes one user message",
                      slug="unsupported-field")
    asked = Asked(options, body.metadata or {})
    kept = {"response_options": options or None, "app_metadata": body.metadata, "tool_calls": outputs or None}

    fork = conversation_id if isinstance(conversation_id, Fork) else None

    def queued() -> dict[str, Any]:
        return queue_question(history, question, conversation_id=None if fork else conversation_id,
                              copy_of=(fork.conversation_id, fork.question_seq) if fork else None,
                              temporary=not body.store, flex=body.service_tier == "flex",
                              end_user=body.safety_identifier or body.user,
                              kept={name: value for name, value in kept.items() if value is not None})

    if body.stream:
        return _event_stream(queued, after=-1, background=body.background)
    with admitted() if not body.background else nullcontext():  # a waiting request, admitted before it stores
        shown = queued()
        if not body.background:
            shown = answer_of(shown)
    return jsonify(as_response(shown, asked, background=body.background))


# A response as one statement: its question (with what its call asked), and the current reply
# with the lengths of the pieces it was handed on in.
_questions, _replies = Message.__table__, Message.__table__.alias("reply")
_RESPONSE = (
    select(*(_questions.c[name] for name in QUESTION_SHOWN), _questions.c.response_options,
           _questions.c.app_metadata, _questions.c.tool_calls.label("outputs"),
           *(_replies.c[name] for name in REPLY_SHOWN), _replies.c.pieces)
    .select_from(_questions.outerjoin(_replies, and_(_replies.c.reply_to_id == _questions.c.id,
                                                     _replies.c.superseded.is_(False))))
    .where(_questions.c.id == bindparam("question"), _questions.c.user_id == bindparam("user"),
           _questions.c.role == Role.USER)
)
GENERATING = frozenset({Status.PROCESSING, Status.CANCELLING})


@dataclass(frozen=True)
class Read:
    """A response as read now: as the API shows its question (the text so far from Redis while it
    is generated), what its call asked, its pieces (the stored reply's once final, else the current
    attempt's, up to the first missing), and its attempt."""

    shown: dict[str, Any]
    asked: Asked
    pieces: list[str]
    attempt: int
    final: bool
    first: int = 0  # the index of pieces[0]


def _read(response: str | uuid.UUID, *, queue: bool = True, from_piece: int = 0) -> Read:
    """The response; while it is written, only its pieces from `from_piece` on (a stream that
    sent the others), and then its `partial` holds only those."""
    ident = response if isinstance(response, uuid.UUID) else parsed(response, "resp_", "response")
    row = reader().execute(_RESPONSE, {"question": ident, "user": g.user}).first()
    if row is None:
        raise Problem(404, "No such response.")
    split_at, asked_at = len(QUESTION_SHOWN), len(QUESTION_SHOWN) + 3
    question = ShownQuestion._make(row[:split_at])
    reply = ShownReply._make(row[asked_at:asked_at + len(REPLY_SHOWN)]) if row[asked_at] is not None else None
    final = question.status in FINAL_STATUSES
    pieces: list[str] = []
    first = 0
    if final and reply is not None:
        pieces = split(reply.content, row.pieces)
    elif question.status in GENERATING and question.attempts:
        pieces, first = read_pieces(services().redis, ident, question.attempts, from_piece), from_piece
    partial = WrittenSoFar(question.attempts, "".join(pieces), first + len(pieces)) if not final and pieces else None
    shown = message_json(question, reply, partial)  # type: ignore[arg-type]
    if queue:
        with_queue_positions([shown])
    asked = Asked(row.response_options or {}, row.app_metadata or {}, row.outputs or [])
    return Read(shown, asked, pieces, question.attempts, final, first)


@bp.get("/responses/<response>")
@operation("OpenAI: a response as it is now; with stream=true its events after starting_after, live "
           "until it ends", responses={200: (ResponseOut, "text/event-stream")}, errors=OpenAIError)
def get_response(response: str) -> Response:
    if request.args.get("stream", "false").lower() not in ("true", "1"):
        read = _read(response)
        return jsonify(as_response(read.shown, read.asked))
    raw = request.args.get("starting_after", "-1")
    if not re.fullmatch(r"-1|[0-9]{1,9}", raw):
        raise Problem(400, "starting_after: a sequence number (0, 1, 2 …)", slug="invalid-field")
    shown = _read(response, queue=False).shown
    return _event_stream(lambda: shown, after=int(raw), background=True)


def _progress(ident: uuid.UUID, background: bool, sent: int) -> tuple[Progress, int]:
    """The response as it reads now, as a stream that sent the events up to `sent` numbers it
    (while it is written, only the pieces after those are read), and which attempt it is at."""
    read = _read(ident, queue=False, from_piece=max(0, sent + 1 - FIRST_DELTA))
    return Progress(as_response(read.shown, read.asked, background=background), read.attempt > 0, read.pieces,
                    read.final, read.first), read.attempt


def _event_stream(question: Callable[[], dict[str, Any]], *, after: int, background: bool) -> Response:
    """The response's events after sequence number `after` as server-sent events, then live until
    it ends. A waiting request (admitted before `question()` stores anything, no database
    connection held while it sleeps); the pieces as the worker hands them on come from the
    conversation's delta channel, and anything missed is read again (Redis, then Postgres)."""
    user, gate = g.user, admission()
    gate.enter(user)
    try:
        shown = question()
    except BaseException:
        gate.leave(user)
        raise
    ident, conversation = uuid.UUID(shown["id"]), uuid.UUID(shown["conversation_id"])

    heartbeat = services().settings.sse_heartbeat_seconds

    def stream() -> Iterator[str]:
        sent, recheck, beat = after, 0.0, time.monotonic() + heartbeat
        deltas = delta_channel(conversation)
        progress: Progress | None = None
        attempt = 0
        with wakeups().streaming(conversation_channel(conversation), deltas) as inbox:
            use_wait_pool()
            while True:
                if time.monotonic() >= recheck or progress is None:
                    try:
                        progress, attempt = _progress(ident, background, sent)
                    except Problem:  # deleted meanwhile: nothing more to send
                        return
                    finally:
                        release_db()
                    recheck = time.monotonic() + recheck_after()
                events = list(events_after(progress, sent))
                if events:  # in one write: a resumed 2,000-token reply is one chunk, not 2,000
                    sent, beat = events[-1]["sequence_number"], time.monotonic() + heartbeat
                    yield "".join(sse(event) for event in events)
                if progress.final:
                    return
                if time.monotonic() >= beat:  # proxies keep the stream open; a client gone is noticed
                    beat = time.monotonic() + heartbeat
                    yield ": heartbeat\n\n"
                inbox.event.wait(max(0.0, min(recheck, beat) - time.monotonic()))
                inbox.event.clear()
                for channel, data in inbox.take():
                    piece = json.loads(data)
                    if piece.get("message_id") != str(ident):
                        continue
                    if channel != deltas or piece.get("attempt") != attempt or piece.get("index") != \
                            progress.handed_on:
                        recheck = 0.0  # a change of status, another attempt or a missed piece: read again
                    else:
                        progress = dataclasses.replace(progress, started=True,
                                                       pieces=[*progress.pieces, piece["text"]])

    response = Response(stream_with_context(stream()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(lambda: gate.leave(user))
    return response


@bp.post("/responses/<response>/cancel")
@operation("OpenAI: cancel a response — queued: never generated; in progress: the text so far kept",
           responses={200: ResponseOut}, errors=OpenAIError)
def cancel_response(response: str) -> Response:
    question_id = parsed(response, "resp_", "response")
    _as_response_or_404(lambda: cancel_question(str(question_id)))
    read = _read(question_id)  # the response as the cancel left it, with what its call asked
    return jsonify(as_response(read.shown, read.asked))


def _as_response_or_404(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The question `read` finds, with a 404 in the Responses API's words."""
    try:
        return read()
    except Problem as problem:
        if problem.status == 404:
            raise Problem(404, "No such response.") from None
        raise


@bp.delete("/responses/<response>")
@operation("OpenAI: delete a response (its question and every reply); later calls on it answer 404",
           responses={200: ResponseOut}, errors=OpenAIError)
def delete_response(response: str) -> Response:
    shown = _read(response, queue=False).shown
    if shown["status"] not in FINAL:
        cancel_question(shown["id"])  # nothing is generated for it after this
    with transaction() as session:  # its replies and their events go with it (the foreign keys cascade)
        session.execute(delete(Message).where(Message.id == uuid.UUID(shown["id"]), Message.user_id == g.user))
    return jsonify({"id": response, "object": "response.deleted", "deleted": True})


@bp.get("/responses/<response>/input_items")
@operation("OpenAI: the items a response was given", responses={200: InputItemList}, errors=OpenAIError)
def input_items(response: str) -> Response:
    read = _read(response, queue=False)
    shown, outputs = read.shown, read.asked.outputs
    items = [{"type": "function_call_output", "id": f"fco_{uuid.UUID(shown['id']).hex}_{index}",
              "call_id": output["call_id"], "output": output["output"], "status": "completed"}
             for index, output in enumerate(outputs)] or [
        {"type": "message", "id": f"msg_{uuid.UUID(shown['id']).hex}", "role": "user", "status": "completed",
         "content": [{"type": "input_text", "text": shown["content"]}]}]
    return jsonify({"object": "list", "data": items, "first_id": items[0]["id"], "last_id": items[-1]["id"],
                    "has_more": False})

