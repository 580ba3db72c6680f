"""What web and worker share of an erasure (DELETE /me): how a user is named in its audit record.
(The user's questions stop first: models/sql/stopping.py.)"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import bindparam, exists, or_, select, text

from ..process.config import Settings
from ..tables.entities import (
    ApiKey,
    Conversation,
    DailyUsage,
    EndUserShare,
    Erasure,
    IdempotentRequest,
    Message,
    Task,
    UserShare,
    WebhookEndpoint,
    WebhookEvent,
)


def user_digest(settings: Settings, user: str) -> str:
    """The user as the audit keeps them once erased: a digest keyed with the service's secret, so
    that "was this user erased?" can be answered for a given user, and the record names no one."""
    key = settings.require_erasure_secret().encode()
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()


# The user's writes against their erasure (migration 0010). DELETE /me takes the user's erasure
# lock exclusively while it records the erasure; every write of the user's data takes it shared
# first (`user_writable()`, also inside `may_queue()`) and is refused while the erasure runs. A
# write therefore commits before the erasure is recorded, and is erased with the rest, or is
# refused: never a 2xx for something the erasure then takes.
# 7362203: the advisory-lock namespace "the user's erasure is being recorded" (key: hashtext of
# the user), the one user_writable() takes shared.
LOCK_OUT_WRITES = text("SELECT pg_advisory_xact_lock(7362203, hashtext(:user))")
USER_WRITABLE = text("SELECT user_writable(:user)")
ERASING = text("SELECT EXISTS (SELECT 1 FROM erasures WHERE user_id = :user AND finished_at IS NULL)")


# Every table that holds rows of a user (by `user_id`): what an erasure deletes (worker/forget.py),
# and what a repeated DELETE /me looks at before it starts another one.
USERS_TABLES = tuple(model.__table__ for model in (WebhookEvent, Message, Conversation, Task, WebhookEndpoint,
                                                   DailyUsage, IdempotentRequest, UserShare, EndUserShare,
                                                   ApiKey))

# The user's last erasure, when it has finished and nothing of the user has been stored since: a
# repeated DELETE /me answers with it and starts nothing (a lookup in each table's user index).
NOTHING_STORED = ~or_(*(exists().where(table.c.user_id == bindparam("user")) for table in USERS_TABLES))
LAST_ERASURE_IF_NOTHING_SINCE = (
    select(Erasure.id, Erasure.requested_at, Erasure.finished_at, Erasure.erased)
    .where(Erasure.user_digest == bindparam("digest"), Erasure.finished_at.is_not(None), NOTHING_STORED)
    .order_by(Erasure.finished_at.desc()).limit(1)
)
