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
    7+n          the end: response.completed, .incomplete, or .failed (failed, expired or cancelled:
                 the response inside says which)

Without text the end follows in_progress (or created, for a response never started).
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
    ever claimed it, the pieces of its text handed on so far (all of them once final), and
    whether it is final."""

    response: dict[str, Any]
    started: bool
    pieces: list[str]
    final: bool


def events_after(progress: Progress, after: int) -> Iterator[dict[str, Any]]:
    """The events numbered after `after` that `progress` already determines, in order."""
    response, pieces = progress.response, progress.pieces
    item_id = reply_item_id(response["id"].removeprefix("resp_"))
    text = "".join(pieces)
    known = _known(progress)
    for number in range(after + 1, known):
        yield {"sequence_number": number, **_event(number, progress, item_id, text)}


def _known(progress: Progress) -> int:
    """How many events `progress` determines (numbered 0 … that − 1)."""
    if progress.pieces:
        return FIRST_DELTA + len(progress.pieces) + (4 if progress.final else 0)
    count = 2 if progress.started else 1
    return count + (1 if progress.final else 0)


def _event(number: int, progress: Progress, item_id: str, text: str) -> dict[str, Any]:
    response, pieces = progress.response, progress.pieces
    ending = _known(progress) - 1 if progress.final else None
    if number == ending:
        return {"type": ENDINGS[response["status"]], "response": response}
    if number == 0:
        return {"type": "response.created", "response": _snapshot(response, "queued")}
    if number == 1:
        return {"type": "response.in_progress", "response": _snapshot(response, "in_progress")}
    where = {"item_id": item_id, "output_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    if number == 2:
        return {"type": "response.output_item.added", "output_index": 0,
                "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
                         "content": []}}
    if number == 3:
        return {"type": "response.content_part.added", **where, "content_index": 0, "part": part}
    piece = number - FIRST_DELTA
    if piece < len(pieces):
        return {"type": "response.output_text.delta", **where, "content_index": 0, "delta": pieces[piece],
                "logprobs": []}
    after_text = piece - len(pieces)
    if after_text == 0:
        return {"type": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []}
    if after_text == 1:
        return {"type": "response.content_part.done", **where, "content_index": 0, "part": {**part, "text": text}}
    return {"type": "response.output_item.done", "output_index": 0,
            "item": {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                     "content": [{**part, "text": text}]}}


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
