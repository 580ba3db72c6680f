"""The webhook outbox, written where the changes are committed.

An event is a row of `webhook_events`, inserted by the very statement (or transaction) that
commits the change it reports — the reply's commit (worker/claim_sql.py), a give-up, a cancel
(web) — with one `webhook_deliveries` row per endpoint of the user that wants it. So there is no
event without its committed change, and no committed change without its event; delivery jobs read
the outbox afterwards (worker/webhooks.py), and the sweeper sends what is due.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import (
    CTE,
    Select,
    String,
    Text,
    and_,
    any_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
)

from ..tables.entities import WebhookDelivery, WebhookEndpoint, WebhookEvent

EVENT_TYPES = ("message.answered", "message.failed", "message.cancelled", "message.expired")
# The same changes in OpenAI's words, for an app on OpenAI's SDKs (docs/openai.md): every question is
# a response. An answer cut at its output limit is sent as `response.incomplete` (worker/webhooks.py),
# to an endpoint that wants either of the two.
RESPONSE_EVENT_TYPES = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")

_endpoints = WebhookEndpoint.__table__
_events = WebhookEvent.__table__
_deliveries = WebhookDelivery.__table__


def change(user_id: Any, question_id: Any, status: Any, *, reply_id: Any = None, error: Any = None) -> tuple[Any, ...]:
    """The columns of one change to report, for a select that `events_of` takes (no reply, no
    error: typed NULLs, which a CTE must hand on with their type)."""
    return (user_id.label("user_id"), question_id.label("question_id"),
            (reply_id if reply_id is not None else cast(null(), _events.c.reply_id.type)).label("reply_id"),
            cast(status, String).label("status"),
            (error if error is not None else cast(null(), Text)).label("error"))


class Outbox(NamedTuple):
    events: CTE  # the events written: id, user_id, type
    deliveries: CTE


def events_of(changes: Select[Any]) -> Outbox:
    """The CTEs that write an event per change (a select of `change(...)`) whose user has an
    endpoint wanting it, and one delivery per such endpoint: added to the statement that commits
    the changes (`.add_cte(*events_of(...))`)."""
    source = changes.cte("outbox_source")
    message_type = literal("message.", String) + source.c.status
    response_type = case((source.c.status == "answered", literal("response.completed", String)),
                         (source.c.status == "expired", literal("response.failed", String)),
                         else_=literal("response.", String) + source.c.status)

    def for_each_wanted(event_type: Any) -> Select[Any]:
        wanted = exists().where(_endpoints.c.user_id == source.c.user_id, _endpoints.c.disabled_at.is_(None),
                                _wants(event_type))
        return select(func.gen_random_uuid(), source.c.user_id, event_type, source.c.question_id,
                      source.c.reply_id, source.c.status, source.c.error, func.now()).where(wanted)

    written = (
        insert(_events)
        .from_select(["id", "user_id", "type", "question_id", "reply_id", "status", "error", "created_at"],
                     union_all(for_each_wanted(message_type), for_each_wanted(response_type)))
        .returning(_events.c.id, _events.c.user_id, _events.c.type)
        .cte("outbox")
    )
    to_each_endpoint = and_(_endpoints.c.user_id == written.c.user_id, _endpoints.c.disabled_at.is_(None),
                            _wants(written.c.type))
    delivered = (
        insert(_deliveries)
        .from_select(["id", "event_id", "endpoint_id", "state", "attempts", "next_attempt_at", "created_at"],
                     select(func.gen_random_uuid(), written.c.id, _endpoints.c.id, literal("pending"), literal(0),
                            func.now(), func.now()).select_from(written.join(_endpoints, to_each_endpoint)))
        .cte("outbox_deliveries")
    )
    return Outbox(written, delivered)


def _wants(event_type: Any) -> Any:
    """An endpoint wants events of this type (one that wants `response.incomplete` gets the
    `response.completed` ones, which are sent as incomplete when the answer was cut)."""
    return or_(event_type == any_(_endpoints.c.events),
               and_(event_type == "response.completed", literal("response.incomplete") == any_(_endpoints.c.events)))

