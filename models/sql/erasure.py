"""What web and worker share of an erasure (DELETE /me): how a user is named in its audit record,
and the statement that stops the user's generations before anything is deleted."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import bindparam, case, func, update

from ..process.config import Settings
from ..tables.entities import PENDING, Message, Status, status_cast, status_in

# Questions still waiting or generated: cancelled (queued) or told to stop (processing), so that no
# worker starts or goes on generating for a user being erased. The web runs it before it answers
# 202 (and tells the workers); the erasure runs it again, for a POST that slipped in between.
_messages = Message.__table__
STOP_GENERATIONS = (
    update(_messages)
    .where(_messages.c.user_id == bindparam("user"), status_in(_messages.c.status, *PENDING))
    .values(status=case((_messages.c.status == Status.QUEUED, status_cast(Status.CANCELLED, _messages.c.status.type)),
                        else_=status_cast(Status.CANCELLING, _messages.c.status.type)),
            updated_at=func.now())
    .returning(_messages.c.id, _messages.c.conversation_id, _messages.c.status)
)



def user_digest(settings: Settings, user: str) -> str:
    """The user as the audit keeps them once erased: a digest keyed with the service's secret, so
    that "was this user erased?" can be answered for a given user, and the record names no one."""
    key = (settings.auth_secret or "chatq-erasures").encode()
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()
