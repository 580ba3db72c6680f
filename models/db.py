"""Engine and session factories. Transactions are opened at the edges (a request, a task)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # A connection broken by a Postgres restart is noticed and replaced, not handed out.
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={"connect_timeout": 3},
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: views serialize rows after the commit without reloading them.
    return sessionmaker(engine, expire_on_commit=False)
