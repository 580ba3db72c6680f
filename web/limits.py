"""Per-user rate limits on POSTs, counted in Redis so every web node shares them (flask-limiter).

RATE_LIMIT is a limits string such as "120/minute" or "10/second;300/hour"; empty turns it off.
Over the limit: 429 problem+json with Retry-After. If Redis cannot be reached the limit is not
enforced (swallow_errors): an outage of the counter must not stop people from chatting.
"""

from __future__ import annotations

from flask import Flask, g, request
from flask_limiter import Limiter

from models import Settings

from .auth import authenticate


def _user_key() -> str:
    # Runs before the blueprint's own authentication: identify the user here (a bad token is a 401).
    return f"user:{g.user if 'user' in g else authenticate()}"


def _is_exempt() -> bool:
    return request.method != "POST" or not request.path.startswith("/api/")


def init_app(app: Flask, settings: Settings) -> None:
    limiter = Limiter(
        key_func=_user_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 2},
        strategy="moving-window",
        default_limits=[settings.rate_limit] if settings.rate_limit else [],
        default_limits_exempt_when=_is_exempt,
        headers_enabled=True,
        swallow_errors=True,
        enabled=bool(settings.rate_limit),
        key_prefix="chatq-limits",
    )
    app.extensions["chatq.limiter"] = limiter
