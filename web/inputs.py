"""Reading what a client sent: JSON bodies and query strings, each failure a clear problem."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from .accept import fingerprint
from .problems import Problem

M = TypeVar("M", bound=BaseModel)


def _field_errors(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{field}: {item['msg']}")
    return "; ".join(parts)


def json_body(model: type[M]) -> M:
    if not request.is_json:
        raise Problem(415, "Send the body as JSON with 'Content-Type: application/json'.")
    try:
        data = request.get_json(silent=True)  # reading the body enforces MAX_CONTENT_LENGTH (413)
    except RecursionError:  # nested deeper than the parser goes: no body of ours looks like that
        raise Problem(400, "The body is nested too deeply.", slug="malformed-json") from None
    if data is None:
        raise Problem(400, "The body is not valid JSON.", slug="malformed-json")
    if not isinstance(data, dict):
        raise Problem(422, "body: must be a JSON object", slug="invalid-field")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise Problem(422, _field_errors(error), slug="invalid-field") from None


def query(model: type[M]) -> M:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as error:
        raise Problem(422, _field_errors(error), slug="invalid-field") from None


def optional_json_body(model: type[M]) -> M:
    """A body whose every field is optional: none at all (`curl -X POST` without -d) means {}."""
    if not request.content_length and not request.is_json:
        return model()
    return json_body(model)


def idempotency_of(route: str, payload: dict[str, Any]) -> tuple[str, str] | None:
    """The request's Idempotency-Key header and the fingerprint of its call (None: no key)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Problem(422, "Idempotency-Key: must be 1 to 255 printable characters", slug="invalid-field")
    return key, fingerprint(route, payload)
