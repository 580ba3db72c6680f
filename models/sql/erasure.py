"""What web and worker share of an erasure (DELETE /me): how a user is named in its audit record.
(The user's questions stop first: models/sql/stopping.py.)"""

from __future__ import annotations

import hashlib
import hmac

from ..process.config import Settings


def user_digest(settings: Settings, user: str) -> str:
    """The user as the audit keeps them once erased: a digest keyed with the service's secret, so
    that "was this user erased?" can be answered for a given user, and the record names no one."""
    key = (settings.auth_secret or "chatq-erasures").encode()
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()
