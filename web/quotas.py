"""Per-user daily quotas — messages and model tokens per UTC day — held across every web node by
one row per user and day in Postgres (models.DailyUsage).

A message is counted by the statement that checks its quota: two posts racing for the last
message of the day cannot both pass. Tokens are counted by the worker when a reply is committed
(they are only known then), so a day's token quota stops the next message once it is reached:
the reply that crosses it is not cut off.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, literal, or_, select
from sqlalchemy.orm import Session

from models import DailyUsage, Settings
from models.sql.usage import TODAY, add_to_today, daily_usage

from .problems import Problem

# Count one message for the user today, unless that would pass the limit (:limit 0: no limit).
# Returns today's counts after it, or nothing when the quota was already used up.
_CHARGE = add_to_today(
    bindparam("user"), messages=literal(1),
    unless_at=or_(bindparam("limit", type_=Integer) == 0, daily_usage.c.messages < bindparam("limit", type_=Integer)),
).returning(daily_usage.c.messages, (daily_usage.c.prompt_tokens + daily_usage.c.completion_tokens).label("tokens"))


def _reset() -> tuple[datetime, int]:
    """The next UTC midnight, and the seconds until it."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return midnight, max(1, int((midnight - now).total_seconds()))


def _over(quota: str, limit: int, what: str) -> Problem:
    midnight, seconds = _reset()
    return Problem(429, f"Daily quota reached: {limit} {what} per day. It resets at {midnight:%H:%M} UTC.",
                   slug="quota-exceeded", headers={"Retry-After": str(seconds)},
                   extensions={"quota": quota, "resets_at": midnight.isoformat().replace("+00:00", "Z")})


def charge_message(session: Session, user: str, settings: Settings) -> None:
    """Count a message (a post or a regenerate) against the user's day, or answer 429 naming the
    quota it would pass, in the transaction that stores it (so that a refused or failed post counts
    nothing). Without any quota, a post is counted by the statement that stores it (web/accept.py)."""
    row = session.execute(_CHARGE, {"user": user, "limit": settings.quota_messages_per_day}).first()
    if row is None:
        raise _over("messages_per_day", settings.quota_messages_per_day, "messages")
    if settings.quota_tokens_per_day and row.tokens >= settings.quota_tokens_per_day:
        raise _over("tokens_per_day", settings.quota_tokens_per_day, "model tokens")


def has_quotas(settings: Settings) -> bool:
    return bool(settings.quota_messages_per_day or settings.quota_tokens_per_day)


def usage_today(session: Session, user: str, settings: Settings) -> dict[str, Any]:
    row = session.scalars(select(DailyUsage).where(DailyUsage.user_id == user,
                                                   DailyUsage.day == TODAY)).one_or_none()
    midnight, _seconds = _reset()
    return {
        "day": (row.day if row is not None else datetime.now(UTC).date()).isoformat(),
        "messages": row.messages if row else 0,
        "prompt_tokens": row.prompt_tokens if row else 0,
        "completion_tokens": row.completion_tokens if row else 0,
        "limits": {"messages_per_day": settings.quota_messages_per_day or None,
                   "tokens_per_day": settings.quota_tokens_per_day or None},
        "resets_at": midnight,
    }

