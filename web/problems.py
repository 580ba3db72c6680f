"""Every error is application/problem+json (RFC 9457): {type, title, status, detail, request_id}."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from flask import Flask, Response, current_app, g, json, request
from werkzeug.exceptions import HTTPException

log = structlog.get_logger(__name__)

PROBLEM_TYPE_BASE = "https://chatq.dev/problems/"


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None,
                 headers: dict[str, str] | None = None, extensions: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extensions = extensions or {}  # RFC 9457 extension members, e.g. the busy message's id


def problem_response(status: int, detail: str, *, slug: str | None = None,
                     headers: dict[str, str] | None = None, extensions: dict[str, str] | None = None) -> Response:
    if request.path.startswith(OPENAI_PREFIX):
        return openai_error_response(status, detail, slug=slug, headers=headers)
    phrase = HTTPStatus(status).phrase
    body = {
        "type": PROBLEM_TYPE_BASE + (slug or phrase.lower().replace(" ", "-")),
        "title": phrase,
        "status": status,
        "detail": detail,
        "request_id": g.get("request_id"),
        **(extensions or {}),
    }
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    response.headers.update(headers or {})
    return response


# Under /v1 (the OpenAI-compatible API) every error is in OpenAI's shape, so that the SDKs raise
# their own exception classes (they go by the status) and read the message.
OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}
# What a retry cannot change: the SDKs retry 408, 409, 429 and 5xx by themselves unless told not to.
_FINAL = frozenset({"quota-exceeded", "not-cancellable", "not-failed", "not-latest", "not-finished",
                    "conversation-busy", "too-many-webhooks", "too-many-keys", "idempotency-key-reused",
                    "not-answered"})


def openai_error_response(status: int, detail: str, *, slug: str | None = None, param: str | None = None,
                          headers: dict[str, str] | None = None) -> Response:
    """`{"error": {"message", "type", "param", "code"}}` with the status chatq answers with (and a
    request id, as every answer), `x-should-retry: false` where retrying cannot help."""
    if param is None and slug in ("invalid-field", "unsupported-field") and ": " in detail:
        param = detail.split(": ", 1)[0]  # "input: must be ..." names the field
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": detail, "type": kind, "param": param, "code": slug}}
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    retryable = status in (408, 409, 429) or status >= 500
    response.headers["x-should-retry"] = "false" if slug in _FINAL or not retryable else "true"
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(error: Problem) -> Response:
        return problem_response(error.status, error.detail, slug=error.slug, headers=error.headers,
                                extensions=error.extensions)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        headers = {}
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        detail = {
            404: "No such resource.",
            413: f"The request body is larger than {current_app.config['MAX_CONTENT_LENGTH'] // 1024} KiB.",
        }.get(status, error.description or HTTPStatus(status).phrase)
        return problem_response(status, detail, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # A bug, or a dependency failing in a way we did not name: log it whole, tell the client
        # only that it happened and which request it was.
        log.exception("unhandled_error", error_type=type(error).__name__)
        return problem_response(500, "Something went wrong on our side; the request id identifies it.")
