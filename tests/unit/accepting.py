"""Accepting a message in the fast tier, as the POST view does it: shared by the tests of the
accepting statement, the claim and the scheduler."""

from __future__ import annotations

from typing import Any

from models import Lane, Settings
from web.accept import Accepted, Asked, accept_message, fingerprint

NO_QUOTAS = Settings.from_env({"DATABASE_URL": "postgresql+psycopg://unused", "REDIS_URL": "redis://unused"})


def accept(session: Any, user: str, content: str, conversation_id: str | None = None, key: str | None = None, *,
           settings: Settings = NO_QUOTAS, lane: Lane = Lane.INTERACTIVE, weight: float = 1.0,
           expires_in: int | None = None) -> Accepted:
    idempotency = (key, fingerprint("chat", {"message": content, "conversation_id": conversation_id})) if key else None
    # Its own transaction, as the view's (a savepoint when the test's session already has one open).
    with session.begin_nested() if session.in_transaction() else session.begin():
        return accept_message(session, user=user, content=content, conversation_id=conversation_id,
                              request_id="unit", idempotency=idempotency, settings=settings,
                              asked=Asked(lane=lane, weight=weight, expires_in=expires_in))
