"""Postgres or Redis unreachable: 503 with Retry-After, never a 500 and never a half-done write."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask, Response, request
from psycopg.errors import QueryCanceled
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .problems import problem_response
from .services import release_db

log = structlog.get_logger(__name__)
RETRY_AFTER = "5"


class RetryingReads(Flask):
    """A read whose pooled connection turns out to be dead (Postgres restarted, or failed over to
    a standby) runs once more: the error invalidated the pool, so the retry gets a fresh connection
    to the server that answers now, and a request that starts after the database is back never
    answers 503 for a connection that died before it. Writes are not retried: a write's 503 says
    nothing was stored, and its client retries with its Idempotency-Key."""

    def dispatch_request(self) -> Any:
        try:
            return super().dispatch_request()
        except DBAPIError as error:
            if not error.connection_invalidated or request.method not in ("GET", "HEAD"):
                raise
        log.info("read_retried_on_a_fresh_connection")
        release_db()
        return super().dispatch_request()


def init_app(app: Flask) -> None:
    @app.errorhandler(PoolTimeoutError)
    def _database_busy(error: Exception) -> Response:
        # Every pooled connection is in use: back-pressure, not an outage.
        log.warning("database_pool_exhausted", error=str(error).splitlines()[0])
        return problem_response(503, "The service is busy; nothing was stored. Retry later.",
                                slug="busy", headers={"Retry-After": "1"})

    @app.errorhandler(OperationalError)
    def _database_down(error: Exception) -> Response:
        if isinstance(getattr(error, "orig", None), QueryCanceled):  # past WEB_STATEMENT_TIMEOUT_MS
            log.warning("statement_timeout", error=str(error).splitlines()[0])
            return problem_response(503, "The request took the database too long; nothing was stored. Retry later.",
                                    slug="busy", headers={"Retry-After": RETRY_AFTER})
        log.warning("database_unreachable", error=str(error).splitlines()[0])
        return problem_response(503, "The database is unreachable; nothing was stored. Retry later.",
                                slug="database-unavailable", headers={"Retry-After": RETRY_AFTER})

    @app.errorhandler(DBAPIError)
    def _database_error(error: DBAPIError) -> Response:
        if error.connection_invalidated:
            return _database_down(error)
        # Anything else the database refused is a bug of ours (input is validated before it gets
        # there): log it whole, answer like any unexpected error.
        log.exception("database_error", error_type=type(error.orig).__name__)
        return problem_response(500, "Something went wrong on our side; the request id identifies it.")

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def _redis_down(error: Exception) -> Response:
        log.warning("redis_unreachable", error=str(error))
        return problem_response(503, "Redis is unreachable. Retry later.",
                                slug="redis-unavailable", headers={"Retry-After": RETRY_AFTER})
