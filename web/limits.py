"""Per-user rate limits, counted in Redis so every web node shares them (flask-limiter).

RATE_LIMIT applies to POSTs of the API, READ_RATE_LIMIT to its GETs (long-polls and event
streams included; how many may wait at once is web/waiting.py's admission). Each is a limits
string such as "120/minute" or "10/second;300/hour"; empty turns it off. Over a limit: 429
problem+json with Retry-After. A request without a valid token is counted per client address (and
then answered 401 by the view). If Redis cannot be reached the limits are not enforced
(swallow_errors): an outage of the counter must not stop people from chatting.
"""

from __future__ import annotations

from flask import Flask, g, request
from flask_limiter import ApplicationLimit, Limiter

from models import Settings

from .auth import authenticate
from .problems import Problem


def _client_key() -> str:
    # Runs before the blueprint's own authentication. A bad token must not raise here: flask-limiter
    # would log it as its own failure, with a traceback, for every anonymous request.
    if "user" in g:
        return f"user:{g.user}"
    try:
        return f"user:{authenticate()}"
    except Problem:
        return f"anonymous:{request.remote_addr}"


def _is_api() -> bool:
    return request.path.startswith("/api/")


def init_app(app: Flask, settings: Settings) -> None:
    # One budget per user for all POSTs of the API, and one for all its GETs, on every node.
    budgets = [ApplicationLimit(limit, methods=[method], exempt_when=lambda: not _is_api(), scope=f"api-{method}")
               for method, limit in (("POST", settings.rate_limit), ("GET", settings.read_rate_limit)) if limit]
    limiter = Limiter(
        key_func=_client_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 2},
        strategy="moving-window",
        application_limits=budgets,
        headers_enabled=True,
        swallow_errors=True,
        enabled=bool(budgets),
        key_prefix="chatq-limits",
    )
    app.extensions["chatq.limiter"] = limiter
