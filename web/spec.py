"""Describing a view for the OpenAPI document, next to the view itself.

    @bp.post("/chat")
    @operation("Send a message", body=NewChat, responses={202: Accepted})

The decorator only records; web/openapi.py reads the records off the app's own route table, so a
route without one still appears in the document (and a test insists that none is without one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    # status -> a response model, or a media type string for non-JSON answers, or (a model, a media
    # type) for an answer in either (JSON, or an event stream when asked), or None for no body
    responses: dict[int, Any] = field(default_factory=dict)
    authenticated: bool = True
    headers: dict[str, str] = field(default_factory=dict)  # request headers: name -> description
    # The shape of its errors: problem+json (None), or a model of another (OpenAI's, under /v1).
    errors: type[BaseModel] | None = None


def operation(summary: str, **details: Any) -> Callable[[F], F]:
    def record(view: F) -> F:
        view.openapi = Operation(summary, **details)  # type: ignore[attr-defined]
        return view

    return record
