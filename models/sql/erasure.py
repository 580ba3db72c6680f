"""What web and worker share of an erasure (DELETE /me): how a user is named in its audit record,
and the statement that stops the user's generations before anything is deleted."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import text

from ..process.config import Settings

# Questions still waiting or generated: cancelled (queued) or told to stop (processing), so that no
# worker starts or goes on generating for a user being erased. The web runs it before it answers
# 202 (and tells the workers); the erasure runs it again, for a POST that slipped in between.
STOP_GENERATIONS = text("""
    UPDATE messages SET status = CASE WHEN status = 'queued' THEN 'cancelled'::message_status
                                      ELSE 'cancelling'::message_status END,
                        updated_at = now()
     WHERE user_id = :user AND status IN ('queued', 'processing')
    RETURNING id, conversation_id, status::text AS status
""")


def user_digest(settings: Settings, user: str) -> str:
    """The user as the audit keeps them once erased: a digest keyed with the service's secret, so
    that "was this user erased?" can be answered for a given user, and the record names no one."""
    key = (settings.auth_secret or "chatq-erasures").encode()
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()
