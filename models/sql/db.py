"""Engine and session factories. Transactions are opened at the edges (a request, a task)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from ..process.connections import POSTGRES_CONNECT_ARGS


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 5,
    on_round_trip: Callable[[str], None] | None = None,
    autocommit: bool = False,
    statement_timeout_ms: int = 0,
) -> Engine:
    """`on_round_trip(kind)` is called for every statement ("statement"), and every transaction
    begin and commit ("begin", "commit"), each a round trip to Postgres: the benchmark counts them.
    `autocommit`: every connection of the pool is in autocommit for good, for an engine that only
    reads or writes single statements (cheaper than switching a connection in and out of it at each
    checkout with `execution_options`: docs/decisions/0010).
    `statement_timeout_ms`: Postgres cancels a statement that runs longer (0: never)."""
    connect_args = dict(POSTGRES_CONNECT_ARGS)
    if statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    engine = create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping: it costs a round trip on every checkout, on every request. A connection
        # broken by a Postgres restart or failover fails its statement instead; SQLAlchemy then
        # invalidates the whole pool, so the process recovers at once: a read is retried once on a
        # fresh connection (web/__init__.py), a write answers 503, a job retries.
        # Recycling retires connections a server-side idle timeout may have cut.
        pool_recycle=1800,
        pool_timeout=pool_timeout,
        connect_args=connect_args,  # a silent server is noticed in seconds (models/process/connections.py)
        # An error's text must not carry what users wrote (it ends up in logs): no bound values.
        hide_parameters=True,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    if on_round_trip is not None:
        event.listen(engine, "before_cursor_execute", lambda *_args: on_round_trip("statement"))
        if autocommit:  # the driver never sends BEGIN or COMMIT on these connections
            return engine

        def transaction_edge(kind: str) -> Callable[..., None]:
            def count(connection: Any) -> None:
                # In autocommit the driver sends no BEGIN or COMMIT: nothing to count.
                if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                    on_round_trip(kind)

            return count

        event.listen(engine, "begin", transaction_edge("begin"))
        event.listen(engine, "commit", transaction_edge("commit"))
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: views serialize rows after the commit without reloading them.
    return sessionmaker(engine, expire_on_commit=False)
