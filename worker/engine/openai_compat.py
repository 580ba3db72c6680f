"""A reply engine for any server that speaks OpenAI's Chat Completions protocol (OpenAI, Ollama,
vLLM, llama.cpp's server, LiteLLM's proxy).

It turns the history loaded from Postgres into chat messages — including the tool calls and tool
results recorded on earlier replies, so "what did I just add?" works with a model too — offers the
todo tools as functions, runs the calls the model makes, and loops until the model answers (at most
`max_steps` requests). With streaming on, content deltas are handed to `on_delta` as they arrive.

Failures: timeouts, connection errors, 429 and 5xx are transient — retried here a few times with
jittered backoff that honours Retry-After, then handed to the worker as TransientEngineError (the
message goes back to the queue). Other 4xx and malformed answers are permanent: the message fails
with a readable error and the retry endpoint can requeue it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from models import backoff

from . import context
from .base import Cancellation, PermanentEngineError, Reply, ReplyRequest, TransientEngineError, Turn
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
BACKOFF_CAP = 10.0


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


@dataclass
class _Answer:
    content: str
    tool_calls: list[dict[str, Any]]  # [{"id", "name", "arguments": str}]
    finish: str = "stop"  # or "length" (the server's finish_reason), or "cancelled" (we closed it)
    usage: dict[str, int] | None = None


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
            usage = _add_usage(usage, answer.usage)
            if not answer.tool_calls or answer.finish == "cancelled":
                return Reply(content=answer.content, tool_calls=list(request.tools.calls), finish=answer.finish,
                             usage=usage, context=sent)
            messages.append({"role": "assistant", "content": answer.content or None, "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"],
                                                                    "arguments": call["arguments"]}}
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
                  cancellation: Cancellation) -> _Answer:
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
                    return _Answer(content="", tool_calls=[], finish="cancelled")
        assert last is not None
        raise last

    def _request(self, messages: list[dict[str, Any]], on_delta: Callable[[str], None] | None,
                 cancellation: Cancellation) -> _Answer:
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
        with response, cancellation.closing(lambda: _hang_up(response)):
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"the model server answered {response.status_code}: {_error_text(response)}",
                                 retry_after=_retry_after(response))
            if response.status_code >= 400 and context.is_overflow(_error_text(response)):
                raise _Overflow(_error_text(response))
            if response.status_code >= 400:
                raise PermanentEngineError(
                    f"The model server refused the request ({response.status_code}): {_error_text(response)}")
            try:
                if self.config.stream:
                    return _read_stream(response, on_delta, cancellation)
                answer = _read_json(response.json())
                if cancellation.is_set():  # nothing of it was shown: stopped with no text
                    return _Answer(content="", tool_calls=[], finish="cancelled")
                return answer
            except requests.RequestException as error:
                raise _Retryable(f"the answer of the model server at {self.config.base_url} broke off") from error
            except (ValueError, KeyError, TypeError, IndexError) as error:
                raise PermanentEngineError(f"The model server's answer is malformed: {error}") from error


class _Overflow(PermanentEngineError):
    """The server says the prompt does not fit its context window."""


def _unreachable(base_url: str, error: Exception) -> str:
    if "refused" in str(error).lower():
        return f"the model server at {base_url} refused the connection"
    if "name or service not known" in str(error).lower() or "resolve" in str(error).lower():
        return f"the model server's name in {base_url} does not resolve"
    return f"the model server at {base_url} cannot be reached"


def _add_usage(total: dict[str, int] | None, more: dict[str, int] | None) -> dict[str, int] | None:
    """A reply's usage over all its requests (a tool call costs a request of its own)."""
    if more is None:
        return total
    if total is None:
        return dict(more)
    return {key: total.get(key, 0) + more.get(key, 0) for key in ("prompt_tokens", "completion_tokens")}


def _hang_up(response: requests.Response) -> None:
    """Close a model's stream from the worker's watcher thread: shutting the socket down wakes the
    read blocked on it at once (closing it would not), and the model server sees the connection
    end — the sign, for servers like llama.cpp and vLLM, to stop generating."""
    connection = getattr(response.raw, "connection", None)  # urllib3 2's HTTPResponse
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: requests.Response) -> float | None:
    try:
        return min(BACKOFF_CAP, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


def _error_text(response: requests.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or error)[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(payload: dict[str, Any]) -> dict[str, int] | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0)}


def _read_json(payload: dict[str, Any]) -> _Answer:
    choice = payload["choices"][0]
    message = choice["message"]
    calls = [{"id": call["id"], "name": call["function"]["name"], "arguments": call["function"].get("arguments", "")}
             for call in message.get("tool_calls") or []]
    if message.get("content") is None and not calls:
        raise ValueError("an answer with neither content nor tool calls")
    return _Answer(content=message.get("content") or "", tool_calls=calls, finish=_finish(choice.get("finish_reason")),
                   usage=_usage(payload))


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _read_stream(response: requests.Response, on_delta: Callable[[str], None] | None,
                 cancellation: Cancellation) -> _Answer:
    content: list[str] = []
    try:
        return _read_chunks(response, on_delta, cancellation, content)
    except (requests.RequestException, OSError):
        if cancellation.is_set():  # we hung up: what was written before the cancel is the reply
            return _Answer(content="".join(content), tool_calls=[], finish="cancelled")
        raise


def _read_chunks(response: requests.Response, on_delta: Callable[[str], None] | None, cancellation: Cancellation,
                 content: list[str]) -> _Answer:
    calls: dict[int, dict[str, Any]] = {}
    finished: str | None = None
    usage: dict[str, int] | None = None
    for chunk in _events(response):
        if cancellation.is_set():
            _hang_up(response)
            return _Answer(content="".join(content), tool_calls=[], finish="cancelled")
        usage = _usage(chunk) or usage
        if "error" in chunk:
            raise ValueError(f"error in stream: {chunk['error']}")
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
                if on_delta is not None:
                    on_delta(delta["content"])
            for part in delta.get("tool_calls") or []:
                call = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] = part.get("id") or call["id"]
                function = part.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
            finished = finished or choice.get("finish_reason")
    if cancellation.is_set():
        return _Answer(content="".join(content), tool_calls=[], finish="cancelled")
    if not finished:
        raise requests.ConnectionError("the stream ended before a finish_reason")
    if not content and not calls:
        raise ValueError("an answer with neither content nor tool calls")
    return _Answer(content="".join(content), tool_calls=[calls[i] for i in sorted(calls)], finish=_finish(finished),
                   usage=usage)
