"""OpenAI's items as chatq's messages, both ways: input items read as turns of a conversation, and a
conversation's messages shown as message items. The ids say where each item lives:

- `conv_<hex>`: a chatq conversation; `resp_<hex>`: a response, which is a question of the user's;
- `msg_<hex>`: a message by its own id (a user's question, or an assistant turn an app stored);
- `msg_<hex>_reply`: the current reply to question `<hex>` — named after its question because a
  response's output item has its id before the reply's row exists (events.py sends it first).
"""

from __future__ import annotations

import uuid
from typing import Any

from models import Message, Role
from models.sql.queries import parse_uuid

from ..problems import Problem

REPLY_SUFFIX = "_reply"


def conversation_id(ident: uuid.UUID | str) -> str:
    return f"conv_{uuid.UUID(str(ident)).hex}"


def response_id(question_id: uuid.UUID | str) -> str:
    return f"resp_{uuid.UUID(str(question_id)).hex}"


def reply_item_id(question_id: uuid.UUID | str) -> str:
    return f"msg_{uuid.UUID(str(question_id)).hex}{REPLY_SUFFIX}"


def parsed(ident: str, prefix: str, what: str) -> uuid.UUID:
    """The uuid in `<prefix><hex>`; 404 in the API's words for anything else."""
    found = parse_uuid(ident.removeprefix(prefix)) if ident.startswith(prefix) else None
    if found is None:
        raise Problem(404, f"No such {what}.")
    return found


def parsed_item(ident: str) -> tuple[uuid.UUID, bool]:
    """An item id's message id, and whether it names that question's current reply."""
    is_reply = ident.endswith(REPLY_SUFFIX)
    return parsed(ident.removesuffix(REPLY_SUFFIX), "msg_", "item"), is_reply


def input_turns(items: str | list[dict[str, Any]], field: str = "input") -> list[tuple[Role, str]]:
    """Input as turns: a string is one user turn; items are messages with text content (system and
    developer messages are read and not kept, docs/openai.md); any other item is refused, by name."""
    if isinstance(items, str):
        return [(Role.USER, items)]
    turns = []
    for index, item in enumerate(items):
        kind, role = item.get("type", "message"), item.get("role")
        if kind != "message" or role not in ("user", "assistant", "system", "developer"):
            raise Problem(400, f"{field}[{index}]: chatq reads message items (user and assistant text) only, "
                          f"not {kind!r}", slug="unsupported-field")
        content = item.get("content")
        if isinstance(content, list):
            parts = [part.get("text") if isinstance(part, dict) else None for part in content]
            if None in parts or any(part.get("type") not in ("input_text", "output_text", "text")
                                    for part in content):
                raise Problem(400, f"{field}[{index}].content: chatq reads text parts only",
                              slug="unsupported-field")
            content = "\n".join(parts)
        if not isinstance(content, str) or len(content) > 8000:
            raise Problem(422, f"{field}[{index}].content: must be text (or text parts) of at most 8000 characters",
                          slug="invalid-field")
        if role in ("user", "assistant"):
            turns.append((Role(role), content))
    return turns


def message_item(row: Message) -> dict[str, Any]:
    """A stored message as a message item."""
    if row.role is Role.USER:
        return {"type": "message", "id": f"msg_{row.id.hex}", "status": "completed", "role": "user",
                "content": [{"type": "input_text", "text": row.content}]}
    return {"type": "message", "id": reply_item_id(row.reply_to_id) if row.reply_to_id else f"msg_{row.id.hex}",
            "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": row.content, "annotations": []}]}
