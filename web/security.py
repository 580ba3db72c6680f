"""Response headers that keep the page safe to embed nothing and run only its own script, and name
the node that answered: the same on every response, so they are added as the response starts
rather than by an after-request hook (which cost ~10x more per request: docs/decisions/0010)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",  # no inline script, no eval
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


class SameHeaders:
    """WSGI middleware: add `headers` to every response (no view sets any of them)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], headers: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.headers = list(headers)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.extend(self.headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def init_app(app: Flask) -> None:
    app.wsgi_app = SameHeaders(app.wsgi_app, [*SECURITY_HEADERS, ("X-Served-By", app.config["SERVER_ID"])])
