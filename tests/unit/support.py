"""What the fast tier's tests share: accepting a message as the POST view does it, and the worker's
statements run on the test's own connection (rolled back after it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, update
from sqlalchemy.orm import Session

from models import Lane, Message, Settings, Status
from web.accept import Accepted, Asked, accept_message, fingerprint

NO_QUOTAS = Settings.from_env({"DATABASE_URL": "postgresql+psycopg://unused", "REDIS_URL": "redis://unused"})


def accept(session: Any, user: str, content: str, conversation_id: str | None = None, key: str | None = None, *,
           settings: Settings = NO_QUOTAS, lane: Lane = Lane.INTERACTIVE, weight: float = 1.0,
           expires_in: int | None = None) -> Accepted:
    idempotency = (key, fingerprint("chat", {"message": content, "conversation_id": conversation_id})) if key else None
    with own_transaction(session):
        return accept_message(session, user=user, content=content, conversation_id=conversation_id,
                              request_id="unit", idempotency=idempotency, settings=settings,
                              asked=Asked(lane=lane, weight=weight, expires_in=expires_in))


@contextmanager
def own_transaction(session: Session) -> Iterator[Session]:
    """A unit of work of its own, as the view's (a savepoint when the test's session already has
    one open, which the test rolls back)."""
    with session.begin_nested() if session.in_transaction() else session.begin():
        yield session


class OneConnection:
    """Stands in for the worker's engine: each `connect()` is a savepoint of the test's connection,
    so the claim's and the commit's statements run as they do in production, then roll back."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        connection = self.session.connection()
        with connection.begin_nested():
            yield connection


def hide_the_queue_of_other_tests(session: Session) -> None:
    """A claim takes whatever should start next in the whole database: inside the test's
    transaction (rolled back after it), messages that other fast tests left queued are set aside."""
    with session.begin():
        session.execute(update(Message).where(Message.status.in_([Status.QUEUED, Status.PROCESSING]))
                        .values(status=Status.FAILED))
