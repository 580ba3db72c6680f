"""A response's stream of events, numbered the one way every node numbers them.

No event is stored. Each is a function of what is stored anyway: the question's status and
attempts (Postgres), the pieces its reply is being handed on in (the attempt's stream in Redis,
which a later attempt starts as a copy of), and, once the reply is stored, its text and the
lengths of those pieces (`messages.pieces`, Postgres). So a stream resumed after any sequence
number, on any node, during the generation or a year after, gets exactly the events after it —
and a stored event costs nothing per token in Postgres beyond four bytes a piece in the reply's row.

The numbers, for a reply handed on in n pieces:

    0            response.created        (always)
    1            response.in_progress    (once a worker has claimed it)
    2, 3         response.output_item.added, response.content_part.added   (with the first piece)
    4 … 3+n      response.output_text.delta, one a piece
    4+n … 6+n    response.output_text.done, response.content_part.done, response.output_item.done
    then         each function call of the app's tools: output_item.added, function_call_arguments
                 .delta and .done, output_item.done (four each)
    last         the end: response.completed, .incomplete, or .failed (failed, expired or cancelled:
                 the response inside says which)

Without text what follows the text's events comes after in_progress (or created, for a response
never started).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .items import reply_item_id

# A response's terminal event by its status. OpenAI's stream has no event for a cancelled
# response: it ends with `response.failed`, whose response reads `cancelled` (docs/openai.md).
ENDINGS = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed",
           "cancelled": "response.failed"}
FIRST_DELTA = 4  # created, in_progress, output_item.added, content_part.added come before it


@dataclass(frozen=True)
class Progress:
    """What is known of a response now: the response object as it reads now, whether a worker
    ever claimed it, the pieces of its text handed on so far from piece `first` on (all of them
    once final: a stream re-reads, while the text is written, only the pieces it has not sent),
    and whether it is final. Its function calls (the app's tools) are in the final response's
    output."""

    response: dict[str, Any]
    started: bool
    pieces: list[str]
    final: bool
    first: int = 0

    @property
    def handed_on(self) -> int:
        """How many pieces were handed on: the next one's index."""
        return self.first + len(self.pieces)


def events_after(progress: Progress, after: int) -> Iterator[dict[str, Any]]:
    """The events numbered after `after` that `progress` already determines, in order."""
    head, item_id = _head(progress), reply_item_id(progress.response["id"].removeprefix("resp_"))
    tail = _tail(progress, item_id) if progress.final else []
    for number in range(after + 1, head + len(tail)):
        event = _head_event(number, progress, item_id) if number < head else tail[number - head]
        yield {"sequence_number": number, **event}


def _head(progress: Progress) -> int:
    """How many events come before the end: created, in_progress, and the text's while written."""
    if progress.handed_on:
        return FIRST_DELTA + progress.handed_on
    return 2 if progress.started else 1


def _head_event(number: int, progress: Progress, item_id: str) -> dict[str, Any]:
    response = progress.response
    if number == 0:
        return {"type": "response.created", "response": _snapshot(response, "queued")}
    if number == 1:
        return {"type": "response.in_progress", "response": _snapshot(response, "in_progress")}
    where = {"item_id": item_id, "output_index": 0}
    if number == 2:
        return {"type": "response.output_item.added", "output_index": 0,
                "item": {"type": "message", "id": where["item_id"], "status": "in_progress", "role": "assistant",
                         "content": []}}
    if number == 3:
        return {"type": "response.content_part.added", **where, "content_index": 0, "part": _part("")}
    return {"type": "response.output_text.delta", **where, "content_index": 0,
            "delta": progress.pieces[number - FIRST_DELTA - progress.first], "logprobs": []}


def _tail(progress: Progress, item_id: str) -> list[dict[str, Any]]:
    """The events of a final response after its text's deltas: the text done, each function call
    (added, its arguments, done), and the end."""
    response, tail = progress.response, []
    assert progress.first == 0, "a final response is read whole"
    if progress.pieces:
        text, where = "".join(progress.pieces), {"item_id": item_id, "output_index": 0}
        tail += [{"type": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []},
                 {"type": "response.content_part.done", **where, "content_index": 0, "part": _part(text)},
                 {"type": "response.output_item.done", "output_index": 0,
                  "item": {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                           "content": [_part(text)]}}]
    calls = [item for item in response["output"] if item["type"] == "function_call"]
    for index, call in enumerate(calls, start=1 if progress.pieces else 0):
        where = {"item_id": call["id"], "output_index": index}
        tail += [{"type": "response.output_item.added", "output_index": index,
                  "item": {**call, "arguments": "", "status": "in_progress"}},
                 {"type": "response.function_call_arguments.delta", **where, "delta": call["arguments"]},
                 {"type": "response.function_call_arguments.done", **where, "name": call["name"],
                  "arguments": call["arguments"]},
                 {"type": "response.output_item.done", "output_index": index, "item": call}]
    return [*tail, {"type": ENDINGS[response["status"]], "response": response}]


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _snapshot(response: dict[str, Any], status: str) -> dict[str, Any]:
    """The response as it read when it was queued or started: nothing written yet."""
    return {**response, "status": status, "output": [], "error": None, "incomplete_details": None,
            "usage": None}


def split(text: str, lengths: list[int] | None) -> list[str]:
    """A stored reply's text cut into the pieces it was handed on in (one piece: not streamed)."""
    if not lengths or sum(lengths) != len(text):
        return [text] if text else []
    pieces, start = [], 0
    for length in lengths:
        pieces.append(text[start:start + length])
        start += length
    return pieces


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
