"""Per-user rate limits, counted in Redis so every web node shares them (flask-limiter).

Every method of the API belongs to a budget: RATE_LIMIT is the writes' (POST, PUT, PATCH, DELETE),
READ_RATE_LIMIT the reads' (GET, HEAD and OPTIONS; long-polls and event streams included; how many
may wait at once is admitted by web/waiting/admission.py). Each is a limits string such as "120/minute" or
"10/second;300/hour"; empty turns it off. Over a limit: 429 problem+json whose Retry-After is
when the limit's window lets the next request through. No other answer carries the limiter's
headers: a Retry-After on a pending message is the contract's poll interval, and a client that
honours it must not be told the window's reset instead. A request without a valid token is counted
per client address (and then answered 401 by the view). If Redis cannot be reached the limits are
not enforced (swallow_errors): an outage of the counter must not stop people from chatting.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded

from models import Settings
from models.process.connections import limiter_storage

from .auth import authenticate
from .problems import Problem, problem_response


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
    return request.path.startswith(("/api/", "/v1/"))


# Which budget each method of the API spends (a method named in neither would not be limited: the
# tests walk the route table against this).
WRITES = ("POST", "PUT", "PATCH", "DELETE")
READS = ("GET", "HEAD", "OPTIONS")


def init_app(app: Flask, settings: Settings) -> None:
    # One budget per user for the API's writes, and one for its reads, on every node.
    budgets = [ApplicationLimit(limit, methods=list(methods), exempt_when=lambda: not _is_api(), scope=f"api-{name}")
               for name, methods, limit in (("writes", WRITES, settings.rate_limit),
                                            ("reads", READS, settings.read_rate_limit)) if limit]
    storage_uri, storage_options = limiter_storage(settings)  # the same Redis (its master, under Sentinel)
    limiter = Limiter(
        key_func=_client_key,
        app=app,
        storage_uri=storage_uri,
        storage_options=storage_options,
        strategy="moving-window",
        application_limits=budgets,
        headers_enabled=False,  # see the module's docstring; a 429's Retry-After is set below
        swallow_errors=True,
        enabled=bool(budgets),
        key_prefix="chatq-limits",
    )
    app.extensions["chatq.limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def _limited(error: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        seconds = max(1, math.ceil(current.reset_at - time.time())) if current is not None else 1
        return problem_response(429, f"Too many requests: at most {error.description}. Retry later.",
                                slug="rate-limited", headers={"Retry-After": str(seconds)})
