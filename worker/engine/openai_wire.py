"""Reading a Chat Completions answer — one JSON document, or a stream of `data:` chunks — into
what the engine needs: the text, the tool calls, why it ended and the tokens it used. A stream is
read piece by piece (each handed on at once) and can be hung up on from another thread."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from .base import Cancellation

BACKOFF_CAP = 10.0


@dataclass
class Answer:
    content: str
    tool_calls: list[dict[str, Any]]  # [{"id", "name", "arguments": str}]
    finish: str = "stop"  # or "length" (the server's finish_reason), or "cancelled" (we closed it)
    usage: dict[str, int] | None = None


def add_usage(total: dict[str, int] | None, more: dict[str, int] | None) -> dict[str, int] | None:
    """A reply's usage over all its requests (a tool call costs a request of its own)."""
    if more is None:
        return total
    if total is None:
        return dict(more)
    return {key: total.get(key, 0) + more.get(key, 0) for key in ("prompt_tokens", "completion_tokens")}


def hang_up(response: requests.Response) -> None:
    """Close a model's stream from the worker's watcher thread: shutting the socket down wakes the
    read blocked on it at once (closing it would not), and the model server sees the connection
    end — the sign, for servers like llama.cpp and vLLM, to stop generating."""
    connection = getattr(response.raw, "connection", None)  # urllib3 2's HTTPResponse
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def retry_after(response: requests.Response) -> float | None:
    try:
        return min(BACKOFF_CAP, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


def error_text(response: requests.Response) -> str:
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


def read_json(payload: dict[str, Any]) -> Answer:
    choice = payload["choices"][0]
    message = choice["message"]
    calls = [{"id": call["id"], "name": call["function"]["name"], "arguments": call["function"].get("arguments", "")}
             for call in message.get("tool_calls") or []]
    if message.get("content") is None and not calls:
        raise ValueError("an answer with neither content nor tool calls")
    return Answer(content=message.get("content") or "", tool_calls=calls, finish=_finish(choice.get("finish_reason")),
                   usage=_usage(payload))


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def read_stream(response: requests.Response, on_delta: Callable[[str], None] | None,
                 cancellation: Cancellation) -> Answer:
    content: list[str] = []
    try:
        return read_chunks(response, on_delta, cancellation, content)
    except (requests.RequestException, OSError):
        if cancellation.is_set():  # we hung up: what was written before the cancel is the reply
            return Answer(content="".join(content), tool_calls=[], finish="cancelled")
        raise


def read_chunks(response: requests.Response, on_delta: Callable[[str], None] | None, cancellation: Cancellation,
                 content: list[str]) -> Answer:
    calls: dict[int, dict[str, Any]] = {}
    finished: str | None = None
    usage: dict[str, int] | None = None
    for chunk in _events(response):
        if cancellation.is_set():
            hang_up(response)
            return Answer(content="".join(content), tool_calls=[], finish="cancelled")
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
        return Answer(content="".join(content), tool_calls=[], finish="cancelled")
    if not finished:
        raise requests.ConnectionError("the stream ended before a finish_reason")
    if not content and not calls:
        raise ValueError("an answer with neither content nor tool calls")
    return Answer(content="".join(content), tool_calls=[calls[i] for i in sorted(calls)], finish=_finish(finished),
                   usage=usage)
