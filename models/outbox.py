"""The webhook outbox, written where the changes are committed.

An event is a row of `webhook_events`, inserted by the very statement (or transaction) that
commits the change it reports — the reply's commit (worker/claim_sql.py), a give-up, a cancel
(web) — with one `webhook_deliveries` row per endpoint of the user that wants it. So there is no
event without its committed change, and no committed change without its event; delivery jobs read
the outbox afterwards (worker/webhooks.py), and the sweeper sends what is due.

The SQL is a fragment both sides share: its source is a query that yields the columns
(user_id, question_id, reply_id, status, error) of the changes to report.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

EVENT_TYPES = ("message.answered", "message.failed", "message.cancelled", "message.expired")


def outbox_ctes(source: str, name: str = "outbox", *, first: bool = False) -> str:
    """CTEs that write an event per row of `source` whose user has an endpoint wanting it, and its
    deliveries: to follow other CTEs (starting with a comma), or `first` after a statement's WITH."""
    return f"""
{"" if first else ","} {name}_source AS ({source})
, {name} AS (
    INSERT INTO webhook_events (id, user_id, type, question_id, reply_id, status, error, created_at)
    SELECT gen_random_uuid(), s.user_id, 'message.' || s.status, s.question_id, s.reply_id, s.status, s.error, now()
      FROM {name}_source AS s
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints AS e
                    WHERE e.user_id = s.user_id AND e.disabled_at IS NULL AND 'message.' || s.status = ANY(e.events))
 RETURNING id, user_id, type
), {name}_deliveries AS (
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, state, attempts, next_attempt_at, created_at)
    SELECT gen_random_uuid(), ev.id, e.id, 'pending', 0, now(), now()
      FROM {name} AS ev JOIN webhook_endpoints AS e
        ON e.user_id = ev.user_id AND e.disabled_at IS NULL AND ev.type = ANY(e.events)
)"""


def _statement(source: str) -> TextClause:
    """A statement of the outbox alone, from constant fragments (never data: values are bound)."""
    return text("".join(("WITH", outbox_ctes(source, first=True), "\nSELECT count(*) FROM outbox")))


# Questions cancelled by a user (web: the cancel call, on_busy=interrupt), in the cancel's transaction.
CANCELLED = _statement("""
    SELECT c.user_id, m.id AS question_id, NULL::uuid AS reply_id, 'cancelled'::text AS status, NULL::text AS error
      FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
     WHERE m.id = ANY(:question_ids)
""")
