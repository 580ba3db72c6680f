"""X-Request-ID: echoed when the client sent a well-formed one, made up otherwise."""

from __future__ import annotations

import re
import uuid

import structlog
from flask import Flask, Response, g, request

WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,128}")


def init_app(app: Flask) -> None:
    @app.before_request
    def _bind_request_id() -> None:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if WELL_FORMED.fullmatch(sent) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def _send_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        return response  # X-Served-By: web/security.py, with the headers every response carries

    @app.teardown_request
    def _clear_context(_error: BaseException | None) -> None:
        structlog.contextvars.clear_contextvars()
