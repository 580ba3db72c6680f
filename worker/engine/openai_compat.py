"""A reply engine for any server that speaks OpenAI's Chat Completions protocol (OpenAI, Ollama,
vLLM, llama.cpp's server, LiteLLM's proxy).

It turns the history loaded from Postgres into chat messages — including the tool calls and tool
results recorded on earlier replies, so "what did I just add?" works with a model too — offers the
todo tools as functions, runs the calls the model makes, and loops until the model answers (at most
`max_steps` requests). With streaming on, content deltas are handed to `on_delta` as they arrive
(reading the answer: openai_wire.py). It sends the most recent whole turns that fit the model's
context window (context.py) and leaves `max_tokens` for the reply; a reply cut there ends with
finish "length".

Failures: timeouts, connection errors, 429 and 5xx are transient — retried here a few times with
jittered backoff that honours Retry-After, then handed to the worker as TransientEngineError (the
message goes back to the queue). Other 4xx and malformed answers are permanent: the message fails
with a readable error and the retry endpoint can requeue it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from models import backoff

from . import context
from .base import Cancellation, PermanentEngineError, Reply, ReplyRequest, TransientEngineError, Turn
from .openai_wire import BACKOFF_CAP, Answer, add_usage, error_text, hang_up, read_json, read_stream, retry_after
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
    base_url: str
    model: str
    api_key: str = ""
    timeout_s: float = 60.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_steps: int = 6
    stream: bool = True
    context_tokens: int = 0  # 0: what the server reports, else context.DEFAULT_CONTEXT_TOKENS
    max_tokens: int = 1024


def call_id(turn: Turn, index: int) -> str:
    return f"call_{turn.seq}_{index}"


def history_messages(system_prompt: str, history: Sequence[Turn], content: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for turn in history:
        if turn.role == "assistant" and turn.tool_calls:
            calls = [{"id": call_id(turn, i), "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}
                     for i, call in enumerate(turn.tool_calls)]
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            messages += [{"role": "tool", "tool_call_id": call_id(turn, i), "content": json.dumps(call.get("result"))}
                         for i, call in enumerate(turn.tool_calls)]
        messages.append({"role": turn.role, "content": turn.content})
    messages.append({"role": "user", "content": content})
    return messages


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
    def __init__(self, config: OpenAIConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._reported_context: int | None = None  # the server's, asked once per process

    def reply(self, request: ReplyRequest) -> Reply:
        count = context.ServerTokenizer(self.config.base_url, self._headers(), timeout=5)
        fixed = (count(self.config.system_prompt) + count(request.content) + count(json.dumps(TOOLS))
                 + 2 * context.MESSAGE_OVERHEAD_TOKENS)
        budget = self._context_tokens() - self.config.max_tokens - fixed
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
        messages = history_messages(self.config.system_prompt, window.turns, request.content)
        sent = {"messages_sent": len(window.turns), "messages_total": window.total}
        cancellation = request.cancellation
        usage: dict[str, int] | None = None
        for step in range(self.config.max_steps):
            if cancellation.is_set():  # between steps: the tools already run stay run
                return Reply(content="", tool_calls=list(request.tools.calls), finish="cancelled", usage=usage,
                             context=sent)
            if step and request.on_restart is not None:
                request.on_restart()  # text before a tool call is not the reply: the page starts again
            answer = self._complete(messages, request, cancellation)
            usage = add_usage(usage, answer.usage)
            if not answer.tool_calls or answer.finish == "cancelled":
                return Reply(content=answer.content, tool_calls=list(request.tools.calls), finish=answer.finish,
                             usage=usage, context=sent)
            messages.append({"role": "assistant", "content": answer.content or None, "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"],
                                                                    "arguments": _as_json(call["arguments"])}}
                for call in answer.tool_calls]})
            for call in answer.tool_calls:
                result = run_tool(request.tools, call["name"], call["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
        raise PermanentEngineError(f"The model did not answer within {self.config.max_steps} steps.")

    def _context_tokens(self) -> int:
        if self.config.context_tokens:
            return self.config.context_tokens
        if self._reported_context is None:
            self._reported_context = context.reported_context(self.config.base_url, self._headers(), timeout=5)
        return self._reported_context or context.DEFAULT_CONTEXT_TOKENS

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    # One completion, retried -----------------------------------------------------------------

    def _complete(self, messages: list[dict[str, Any]], request: ReplyRequest,
                  cancellation: Cancellation) -> Answer:
        last: TransientEngineError | None = None
        for attempt in range(ATTEMPTS):
            if attempt and request.on_restart is not None:
                request.on_restart()  # what the failed request streamed is not the reply
            try:
                return self._request(messages, request.on_delta, cancellation)
            except _Retryable as error:
                last = TransientEngineError(str(error))
                pause = error.retry_after or backoff.full_jitter(attempt, cap=BACKOFF_CAP)
                if attempt + 1 < ATTEMPTS and cancellation.wait(pause):
                    return Answer(content="", tool_calls=[], finish="cancelled")
        assert last is not None
        raise last

    def _request(self, messages: list[dict[str, Any]], on_delta: Callable[[str], None] | None,
                 cancellation: Cancellation) -> Answer:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, "tools": TOOLS,
                                "stream": self.config.stream, "max_tokens": self.config.max_tokens}
        if self.config.stream:
            body["stream_options"] = {"include_usage": True}  # the token counts, in the last chunk
        headers = self._headers()
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        try:
            response = requests.post(url, json=body, headers=headers, timeout=self.config.timeout_s,
                                     stream=self.config.stream)
        except requests.Timeout as error:
            raise _Retryable(f"the model server at {self.config.base_url} did not answer within "
                             f"{self.config.timeout_s:g} s") from error
        except requests.ConnectionError as error:
            raise _Retryable(_unreachable(self.config.base_url, error)) from error
        with response, cancellation.closing(lambda: hang_up(response)):
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"the model server answered {response.status_code}: {error_text(response)}",
                                 retry_after=retry_after(response))
            if response.status_code >= 400 and context.is_overflow(error_text(response)):
                raise _Overflow(error_text(response))
            if response.status_code >= 400:
                raise PermanentEngineError(
                    f"The model server refused the request ({response.status_code}): {error_text(response)}")
            try:
                if self.config.stream:
                    return read_stream(response, on_delta, cancellation)
                answer = read_json(response.json())
                if cancellation.is_set():  # nothing of it was shown: stopped with no text
                    return Answer(content="", tool_calls=[], finish="cancelled")
                return answer
            except requests.RequestException as error:
                raise _Retryable(f"the answer of the model server at {self.config.base_url} broke off") from error
            except (ValueError, KeyError, TypeError, IndexError) as error:
                raise PermanentEngineError(f"The model server's answer is malformed: {error}") from error


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


def _unreachable(base_url: str, error: Exception) -> str:
    if "refused" in str(error).lower():
        return f"the model server at {base_url} refused the connection"
    if "name or service not known" in str(error).lower() or "resolve" in str(error).lower():
        return f"the model server's name in {base_url} does not resolve"
    return f"the model server at {base_url} cannot be reached"


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
