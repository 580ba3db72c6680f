"""A reply engine for any server that speaks OpenAI's Chat Completions protocol (OpenAI, Ollama,
vLLM, llama.cpp's server, LiteLLM's proxy).

It turns the history loaded from Postgres into chat messages — including the tool calls and tool
results recorded on earlier replies, so "what did I just add?" works with a model too — offers the
todo tools as functions, runs the calls the model makes, and loops until the model answers (at most
`max_steps` requests). With streaming on, content deltas are handed to `on_delta` as they arrive
(reading the answer: openai_wire.py). It sends the most recent whole turns that fit the model's
context window (context.py) and leaves `max_tokens` for the reply; a reply cut there ends with
finish "length".

Every request goes to a server of the pool (pool.py) on a slot taken there first. Failures:
timeouts, connection errors, 429 and 5xx are transient. A request that failed before its first
token goes at once to another server (the failed one cools down, for every worker); one that failed
after it, or when no other server can answer, is retried after a jittered backoff that honours
Retry-After; after a few requests the failure is handed to the worker as TransientEngineError (the
message goes back to the queue). Other 4xx and malformed answers are permanent: the message fails
with a readable error and the retry endpoint can requeue it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from models import Finish
from models.coordination.model_pool import ModelServer
from models.policy import backoff

from .. import metrics
from . import context
from .base import AppRequest, Cancellation, PermanentEngineError, Reply, ReplyRequest, TransientEngineError, Turn
from .openai_wire import BACKOFF_CAP, Answer, add_usage, error_text, hang_up, read_json, read_stream, retry_after
from .pool import NoServer, Pool, Slot
from .tools import TodoTools

DEFAULT_SYSTEM_PROMPT = (
    "You are chatq, a friendly assistant that keeps the user's todo list. Use the tools to add, list, "
    "complete, delete and rename tasks; list the tasks first when you need a task's id. Answer briefly "
    "and say what you did."
)
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "add_task", "description": "Add a task to the user's todo list.",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}},
    {"type": "function", "function": {
        "name": "list_tasks", "description": "List the user's tasks, numbered, with their ids.",
        "parameters": {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["open", "done", "all"]}}}}},
    {"type": "function", "function": {
        "name": "complete_task", "description": "Mark a task as done.",
        "parameters": {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]}}},
    {"type": "function", "function": {
        "name": "delete_task", "description": "Delete a task.",
        "parameters": {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]}}},
    {"type": "function", "function": {
        "name": "rename_task", "description": "Give a task a new title.",
        "parameters": {"type": "object", "properties": {"task_id": {"type": "string"}, "title": {"type": "string"}},
                       "required": ["task_id", "title"]}}},
]
TOOL_NAMES = {tool["function"]["name"] for tool in TOOLS}
ATTEMPTS = 3  # requests per step before a transient failure is handed to the worker


@dataclass(frozen=True)
class OpenAIConfig:
    timeout_s: float = 60.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_steps: int = 6
    stream: bool = True
    context_tokens: int = 0  # 0: what the server reports, else context.DEFAULT_CONTEXT_TOKENS
    max_tokens: int = 1024


def call_id(turn: Turn, index: int) -> str:
    return f"call_{turn.seq}_{index}"


def history_messages(system_prompt: str, history: Sequence[Turn], content: str,
                     tool_outputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The conversation as Chat Completions messages. A reply's tool calls come with their results;
    a call of the app's own tools (`"client": true`) has none there — the user message after it
    carries its output (`tool_outputs`), and is sent as the tool's message."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for turn in history:
        if turn.role == "assistant" and turn.tool_calls:
            calls = [{"id": call_id(turn, i), "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}
                     for i, call in enumerate(turn.tool_calls)]
            apps = any(call.get("client") for call in turn.tool_calls)
            messages.append({"role": "assistant", "content": (turn.content or None) if apps else None,
                             "tool_calls": calls})
            messages += [{"role": "tool", "tool_call_id": call_id(turn, i), "content": json.dumps(call.get("result"))}
                         for i, call in enumerate(turn.tool_calls) if not call.get("client")]
            if apps:
                continue  # its text came with the calls; the app's outputs follow
        elif turn.role == "user" and turn.tool_calls:
            messages += _outputs(turn.tool_calls)
            continue
        messages.append({"role": turn.role, "content": turn.content})
    messages += _outputs(tool_outputs) if tool_outputs else [{"role": "user", "content": content}]
    return messages


def _outputs(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "tool", "tool_call_id": output["call_id"], "content": output["output"]} for output in outputs]


def run_tool(tools: TodoTools, name: str, raw_arguments: str) -> dict[str, Any]:
    """Run one tool call of the model's. Bad arguments are the model's mistake: they are answered
    as a tool error it can read and correct, never raised."""
    if name not in TOOL_NAMES:
        return {"error": f"unknown tool {name!r}"}
    try:
        arguments = json.loads(raw_arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("arguments must be a JSON object")
        return getattr(tools, name)(**arguments)
    except (ValueError, TypeError) as error:
        return {"error": f"bad arguments for {name}: {error}"}


class OpenAICompatibleEngine:
    def __init__(self, config: OpenAIConfig, pool: Pool) -> None:
        self.config = config
        self.pool = pool
        # Each server's context window, asked once per process: a property of the server.
        self._reported_context: dict[str, int | None] = {}

    def reserve(self, stopping: Callable[[], bool]) -> Slot | None:
        return self.pool.reserve(stopping)

    def reply(self, request: ReplyRequest) -> Reply:
        # Counted and fitted for the server the conversation is likely to get (its last one, else
        # the first): a server with a smaller window answers "does not fit", and less is sent.
        place = self.pool.preferred(request.conversation_id)
        likely = place.server if place is not None else self.pool.servers[0]
        room = self._context_tokens(likely) - self.config.max_tokens
        fixed_texts = (request.app.instructions or self.config.system_prompt, request.content,
                       json.dumps([*TOOLS, *request.app.tools]), json.dumps(request.tool_outputs or []))
        count = context.ServerTokenizer(likely.url, _headers(likely), timeout=5)
        if context.fits_whole(request.history, fixed_texts, room):  # most conversations: no counting
            budget, window = room, context.Window(list(request.history), len(request.history))
        else:
            budget = room - sum(count(text) for text in fixed_texts) - 2 * context.MESSAGE_OVERHEAD_TOKENS
            window = context.fit(request.history, budget, count)
        # The estimate may be wrong where no tokenizer was asked: a server's "does not fit" sends
        # half as much history again (a few times), never a message that fails for being long.
        for _ in range(4):
            try:
                return self._generate(request, window)
            except _Overflow as overflow:
                if not window.turns:
                    raise PermanentEngineError(f"The question does not fit the model's context window: {overflow}") \
                        from overflow
                window = context.fit(request.history, budget, count, at_most=len(window.turns) // 2)
        raise PermanentEngineError("The model server kept answering that the history does not fit its context.")

    def _generate(self, request: ReplyRequest, window: context.Window) -> Reply:
        messages = history_messages(request.app.instructions or self.config.system_prompt, window.turns,
                                    request.content, request.tool_outputs)
        apps_tools = {tool["function"]["name"] for tool in request.app.tools}
        sent = {"messages_sent": len(window.turns), "messages_total": window.total}
        cancellation = request.cancellation
        usage: dict[str, int] | None = None
        model: str | None = None  # the last server's that answered
        # The reply so far: what an earlier attempt handed on, then each step's text (text before a
        # tool call is handed on as it comes, so it stays part of the reply).
        said, prefix = "", request.written
        for _step in range(self.config.max_steps):
            if cancellation.is_set():  # between steps: the tools already run stay run
                return Reply(content=said + prefix, tool_calls=list(request.tools.calls), finish="cancelled",
                             usage=usage, context=sent, model=model)
            answer, server = self._complete(messages, request, cancellation, prefix)
            model = server.model if server is not None else model
            usage = add_usage(usage, answer.usage)
            if not answer.tool_calls or answer.finish == Finish.CANCELLED:
                return Reply(content=said + answer.content, tool_calls=list(request.tools.calls),
                             finish=answer.finish, usage=usage, context=sent, model=model)
            said, prefix = said + answer.content, ""
            theirs = [call for call in answer.tool_calls if call["name"] in apps_tools - TOOL_NAMES]
            if theirs:  # the app runs these: the reply ends with them (ours run first, and are kept)
                for call in answer.tool_calls:
                    if call not in theirs:
                        run_tool(request.tools, call["name"], call["arguments"])
                # Whole calls were parsed: the reply is complete whatever the server cut after them.
                return Reply(content=said, finish=Finish.STOP, usage=usage, context=sent, model=model,
                             tool_calls=[*request.tools.calls, *({"name": call["name"], "client": True,
                                                                  "arguments": json.loads(_as_json(call["arguments"]))}
                                                                 for call in theirs)])
            messages.append({"role": "assistant", "content": answer.content or None, "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"],
                                                                    "arguments": _as_json(call["arguments"])}}
                for call in answer.tool_calls]})
            for call in answer.tool_calls:
                result = run_tool(request.tools, call["name"], call["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
        raise PermanentEngineError(f"The model did not answer within {self.config.max_steps} steps.")

    def _context_tokens(self, server: ModelServer) -> int:
        if self.config.context_tokens:
            return self.config.context_tokens
        if server.key not in self._reported_context:
            self._reported_context[server.key] = context.reported_context(server.url, _headers(server), timeout=5)
        return self._reported_context[server.key] or context.DEFAULT_CONTEXT_TOKENS

    # One completion, on the pool, retried --------------------------------------------------------

    def _complete(self, messages: list[dict[str, Any]], request: ReplyRequest, cancellation: Cancellation,
                  prefix: str = "") -> tuple[Answer, ModelServer | None]:
        """The answer, and the server that gave it (None: cancelled before any did). `prefix` is
        text of this answer handed on already: it is sent as the start of the assistant's message,
        which the server continues (llama.cpp's assistant prefill; vLLM's `continue_final_message`),
        and the answer's content begins with it. A request that broke off mid-stream is retried the
        same way, from the text it handed on."""
        last: _Retryable | None = None
        failed_on: set[str] = set()
        for attempt in range(ATTEMPTS):
            deltas = _Deltas(request.on_delta)
            asked = [*messages, {"role": "assistant", "content": prefix}] if prefix else messages
            try:
                with self.pool.slot(request.conversation_id, cancellation, frozenset(failed_on),
                                    reserved=request.reserved if isinstance(request.reserved, Slot) else None) as slot:
                    if slot is None:
                        return Answer(content=prefix, tool_calls=[], finish="cancelled"), None
                    try:
                        answer = self._request(slot, asked, deltas, cancellation, request.app)
                    except _Retryable as error:
                        last = error
                        failed_on.add(slot.server.key)
                        if error.kind is not None:
                            self.pool.failed(slot.server, error.kind)
                        prefix += deltas.text
                    else:
                        self.pool.answered(slot, request.conversation_id)
                        return dataclasses.replace(answer, content=prefix + answer.content), slot.server
            except NoServer as unavailable:  # no server to try: the attempt ends, its cause kept
                raise TransientEngineError(f"{last}; {unavailable}" if last else str(unavailable)) from unavailable
            # The slot is given back before any pause. Failed before its first token, the request
            # goes at once to a server it has not failed on, if the pool has one.
            if deltas.first_at is None and len(failed_on) < len(self.pool.servers):
                continue
            pause = last.retry_after or backoff.full_jitter(attempt, cap=BACKOFF_CAP)
            if attempt + 1 < ATTEMPTS and cancellation.wait(pause):
                return Answer(content=prefix, tool_calls=[], finish="cancelled"), None
        assert last is not None
        raise TransientEngineError(str(last))

    def _request(self, slot: Slot, messages: list[dict[str, Any]], deltas: _Deltas,
                 cancellation: Cancellation, app: AppRequest) -> Answer:
        server = slot.server
        max_tokens = min(self.config.max_tokens, app.max_output_tokens or self.config.max_tokens)
        body: dict[str, Any] = {"model": server.model, "messages": messages, "tools": [*TOOLS, *app.tools],
                                "stream": self.config.stream, "max_tokens": max_tokens}
        if app.tool_choice is not None:
            body["tool_choice"] = app.tool_choice
        if server.pin_slots:
            body["id_slot"] = slot.index
        if self.config.stream:
            body["stream_options"] = {"include_usage": True}  # the token counts, in the last chunk
        url = server.url.rstrip("/") + "/chat/completions"
        where = server.shown_url
        deltas.sent_at = time.monotonic()
        try:
            response = requests.post(url, json=body, headers=_headers(server), timeout=self.config.timeout_s,
                                     stream=self.config.stream)
        except requests.Timeout as error:
            raise _Retryable(f"the model server at {where} did not answer within {self.config.timeout_s:g} s",
                             kind="timeout") from error
        except requests.ConnectionError as error:
            raise _Retryable(_unreachable(where, error), kind="connection") from error
        with response, cancellation.closing(lambda: hang_up(response)):
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"the model server at {where} answered {response.status_code}: "
                                 f"{error_text(response)}", retry_after=retry_after(response),
                                 kind="5xx" if response.status_code >= 500 else None)
            if response.status_code >= 400 and context.is_overflow(error_text(response)):
                raise _Overflow(error_text(response))
            if response.status_code >= 400:
                raise PermanentEngineError(
                    f"The model server refused the request ({response.status_code}): {error_text(response)}")
            try:
                if self.config.stream:
                    answer = read_stream(response, deltas, cancellation)
                else:
                    answer = read_json(response.json())
                    if cancellation.is_set():  # nothing of it was shown: stopped with no text
                        return Answer(content="", tool_calls=[], finish="cancelled")
            except requests.RequestException as error:
                raise _Retryable(f"the answer of the model server at {where} broke off", kind="connection") from error
            except (ValueError, KeyError, TypeError, IndexError) as error:
                raise PermanentEngineError(f"The model server's answer is malformed: {error}") from error
        deltas.observe(server, answer)
        return answer


def _headers(server: ModelServer) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if server.api_key:
        headers["Authorization"] = f"Bearer {server.api_key}"
    return headers


class _Deltas:
    """A request's streamed deltas, handed on; when it was sent and its first token arrived (the
    pool's time to first token, and whether a failure came before it)."""

    def __init__(self, on_delta: Callable[[str], None] | None) -> None:
        self._on_delta = on_delta
        self.sent_at = time.monotonic()
        self.first_at: float | None = None
        self.text = ""  # handed on so far: a retry continues from it

    def __call__(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.text += text
        if self._on_delta is not None:
            self._on_delta(text)

    def observe(self, server: ModelServer, answer: Answer) -> None:
        ended = time.monotonic()
        if self.first_at is not None:
            metrics.LLM_FIRST_TOKEN.labels(server.key).observe(self.first_at - self.sent_at)
        completion = (answer.usage or {}).get("completion_tokens")
        if completion and ended > self.sent_at:
            metrics.LLM_TOKENS_PER_SECOND.labels(server.key).observe(completion / (ended - self.sent_at))


def _as_json(arguments: str) -> str:
    """A call's arguments as sent back to the model: its own text when it is a JSON object, else
    `{}` (the tool's answer tells it what was wrong). Servers parse them: llama.cpp answers 500 to
    a history holding arguments that are not JSON, every time."""
    try:
        return arguments if isinstance(json.loads(arguments or "{}"), dict) else "{}"
    except ValueError:
        return "{}"


class _Overflow(PermanentEngineError):
    """The server says the prompt does not fit its context window."""


def _unreachable(where: str, error: Exception) -> str:
    if "refused" in str(error).lower():
        return f"the model server at {where} refused the connection"
    if "name or service not known" in str(error).lower() or "resolve" in str(error).lower():
        return f"the model server's name in {where} does not resolve"
    return f"the model server at {where} cannot be reached"


class _Retryable(Exception):
    """A request that may succeed later or elsewhere; `kind` names the server's fault (connection,
    timeout, 5xx: it cools down), None when it is not one (429: busy)."""

    def __init__(self, message: str, retry_after: float | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind
