"""A user's use of the day (daily_usage): the one rule every statement that counts follows.

One row per user and UTC day; a count is added to what the day holds, by the statement that does
the thing counted — accepting a message (web/accept.py), charging one against a quota
(web/quotas.py), committing a reply's tokens (worker/claim_sql.py) — so the quotas hold across
every node and `GET /usage` reads one row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Date, FromClause, cast, func, select
from sqlalchemy.dialects.postgresql import Insert, insert

from ..tables.entities import DailyUsage

daily_usage = DailyUsage.__table__

# Days are UTC days, whatever the server's time zone.
TODAY = cast(func.timezone("UTC", func.now()), Date)


def add_to_today(user: ColumnElement[Any], *, source: FromClause | None = None, when: ColumnElement[bool] | None = None,
                 unless_at: ColumnElement[bool] | None = None, **counts: ColumnElement[Any]) -> Insert:
    """Add `counts` (messages, prompt_tokens, completion_tokens) to `user`'s row of today: one row
    per row of `source` (none: one row), only where `when` holds. `unless_at`: a condition on the
    day's row as it stands (a quota); where it fails, nothing is added and nothing is returned."""
    added = select(user, TODAY, *counts.values())
    if source is not None:
        added = added.select_from(source)
    if when is not None:
        added = added.where(when)
    statement = insert(daily_usage).from_select(["user_id", "day", *counts], added)
    return statement.on_conflict_do_update(
        index_elements=[daily_usage.c.user_id, daily_usage.c.day],
        set_={name: daily_usage.c[name] + statement.excluded[name] for name in counts},
        where=unless_at,
    )
