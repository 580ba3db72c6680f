"""What of a conversation a model is sent: the most recent whole turns that fit its context window.

A conversation grows without bound; a model reads a few thousand tokens. The engine sends the
system prompt, the tools, the question and — newest first, until the next one would not fit — the
turns before it, each whole (an assistant turn with its tool calls and their results is one), the
window starting at a question. It leaves `max_tokens` free for the reply. (OpenAI's Responses API
calls this `truncation: "auto"`; LangChain's `trim_messages(strategy="last")` does the same.)

Tokens are counted by the model server's own tokenizer where it has one (llama.cpp's
`POST /tokenize`), and otherwise estimated: one token per 3 bytes of UTF-8 plus 4 per message.
BPE tokenizers give about 4 characters of English per token, so the estimate errs on the side of
sending less; where it errs the other way (some scripts), the server's "context exceeded" answer
makes the engine send half as much history and try again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests

from .base import Turn

DEFAULT_CONTEXT_TOKENS = 8192
MESSAGE_OVERHEAD_TOKENS = 4  # the chat template's role markers around each message
BYTES_PER_TOKEN_ESTIMATE = 3
# What servers answer when a prompt does not fit (llama.cpp, OpenAI, vLLM, Ollama).
OVERFLOW_MARKERS = ("context size", "context length", "context_length", "maximum context", "too long", "n_ctx")

Counter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN_ESTIMATE)


def is_overflow(error_text: str) -> bool:
    lowered = error_text.lower()
    return any(marker in lowered for marker in OVERFLOW_MARKERS)


def server_root(base_url: str) -> str:
    """llama.cpp's own endpoints (/props, /tokenize) live beside its OpenAI ones (/v1/...)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def reported_context(base_url: str, headers: dict[str, str], timeout: float) -> int | None:
    """The context window the server says it serves: llama.cpp's per-slot `n_ctx` (GET /props) or
    vLLM's `max_model_len` (GET /v1/models). None when it says neither."""
    probes = ((server_root(base_url) + "/props", lambda body: body["default_generation_settings"]["n_ctx"]),
              (base_url.rstrip("/") + "/models", lambda body: body["data"][0]["max_model_len"]))
    for url, read in probes:
        try:
            response = requests.get(url, headers=headers, timeout=timeout)
            if response.ok:
                return int(read(response.json()))
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
            continue
    return None


class ServerTokenizer:
    """Counts with the server's tokenizer (llama.cpp's POST /tokenize); after its first failure,
    for the rest of this reply, estimates instead."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        self._url = server_root(base_url) + "/tokenize"
        self._headers = headers
        self._timeout = timeout
        self.exact = True

    def __call__(self, text: str) -> int:
        if self.exact and text:
            try:
                response = requests.post(self._url, json={"content": text}, headers=self._headers,
                                         timeout=self._timeout)
                if response.ok:
                    return len(response.json()["tokens"])
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            self.exact = False
        return estimate_tokens(text)


def turn_tokens(turn: Turn, count: Counter) -> int:
    tokens = count(turn.content) + MESSAGE_OVERHEAD_TOKENS
    for call in turn.tool_calls:  # the call and its result travel as two more messages
        tokens += count(json.dumps(call.get("arguments", {}))) + count(json.dumps(call.get("result")))
        tokens += 2 * MESSAGE_OVERHEAD_TOKENS
    return tokens


@dataclass(frozen=True)
class Window:
    turns: list[Turn]  # what is sent, in order
    total: int  # the history's length


ESTIMATE_MARGIN = 2  # the estimate may be this far below the truth (some scripts) and still fit


def fits_whole(history: Sequence[Turn], texts: Sequence[str], budget: int) -> bool:
    """Whether the whole history and `texts` surely fit `budget` by the estimate alone, with room
    for it to be ESTIMATE_MARGIN times too low: then nothing need be counted exactly (each exact
    count is a round trip to the model server, one per turn, before the request can go)."""
    allowed = budget / ESTIMATE_MARGIN
    used = sum(estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS for text in texts)
    for index in range(len(history) - 1, -1, -1):
        if used > allowed:
            return False
        used += turn_tokens(history[index], estimate_tokens)
    return used <= allowed


def fit(history: Sequence[Turn], budget: int, count: Counter, *, at_most: int | None = None) -> Window:
    """The most recent whole turns whose tokens fit `budget` (and no more than `at_most` of them),
    starting at a question."""
    kept: list[Turn] = []
    used = 0
    for index in range(len(history) - 1, -1, -1):
        if at_most is not None and len(kept) >= at_most:
            break
        turn = history[index]
        cost = turn_tokens(turn, count)
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    while kept and kept[0].role == "assistant":  # a reply without its question reads as nonsense
        kept.pop(0)
    return Window(kept, len(history))
