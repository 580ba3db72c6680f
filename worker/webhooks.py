"""Delivering webhook events from the outbox (models/sql/outbox.py), on a queue of their own.

The sweeper claims what is due (`claim_due`: a fresh claim token and a short lease on each
delivery) and sends one job per delivery to the `webhooks` queue, which only `celery -A worker
worker -Q webhooks` consumes: a slow receiver never holds a reply up. A job whose worker dies
leaves its delivery to come due again when the lease ends. Each try:

- builds the event's payload once (from rows that do not change afterwards) and stores it, so every
  retry sends the same bytes under the same `webhook-id`;
- signs it as Standard Webhooks says (`webhook-id`, `webhook-timestamp`, `webhook-signature`:
  HMAC-SHA256 with the endpoint's `whsec_` secret);
- resolves the host and connects to an address it checked (models/policy/addresses.py), follows no
  redirect, gives up after WEBHOOK_TIMEOUT_SECONDS, keeps 1,000 characters of the answer;
- on failure, schedules the next try: the delay doubles from WEBHOOK_BACKOFF_BASE_SECONDS up to
  WEBHOOK_BACKOFF_CAP_SECONDS, with "equal jitter" (half of it random: tries spread out, and every
  delay is still at least as long as the one before it), for WEBHOOK_GIVE_UP_SECONDS; an endpoint
  that has failed throughout WEBHOOK_DISABLE_AFTER_SECONDS is disabled, with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
import urllib3
from sqlalchemy import text
from sqlalchemy.orm import Session

from models import Finish, Message, Settings, Status
from models.policy.addresses import refused, resolve
from models.representation import message_json

from .runtime import Runtime

log = structlog.get_logger(__name__)
BODY_KEPT = 1000
CLAIM_MARGIN_SECONDS = 20.0  # a claimed delivery comes due again this long after its request could end

CLAIM_DUE = text("""
UPDATE webhook_deliveries AS d SET claim = gen_random_uuid(), next_attempt_at = now() + make_interval(secs => :lease)
 WHERE d.id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT 200 FOR UPDATE SKIP LOCKED)
   AND EXISTS (SELECT 1 FROM webhook_endpoints AS e WHERE e.id = d.endpoint_id AND e.disabled_at IS NULL)
RETURNING d.id, d.claim
""")

LOAD = text("""
SELECT d.id, d.attempts, d.created_at, e.id AS endpoint_id, e.url, e.secret, e.failing_since,
       v.id AS event_id, v.type, v.question_id, v.reply_id, v.status, v.error, v.payload, v.created_at AS event_at
  FROM webhook_deliveries AS d
  JOIN webhook_endpoints AS e ON e.id = d.endpoint_id
  JOIN webhook_events AS v ON v.id = d.event_id
 WHERE d.id = :id AND d.claim = :claim AND d.state = 'pending'
""")


def claim_due(runtime: Runtime) -> list[tuple[str, str]]:
    """(delivery id, claim) of every delivery due now, claimed for one try."""
    lease = runtime.settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS
    with runtime.db.connect() as connection:
        return [(str(row.id), str(row.claim)) for row in connection.execute(CLAIM_DUE, {"lease": lease})]


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' signature: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with
    the base64 part of the `whsec_` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def backoff(settings: Settings, failures: int) -> float:
    """Equal jitter: half the doubled delay fixed, half random; never shorter than the last."""
    ceiling = min(settings.webhook_backoff_cap_seconds, settings.webhook_backoff_base_seconds * 2 ** failures)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    duration_ms: int
    error: str | None
    body: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _payload(runtime: Runtime, row: Any) -> dict[str, Any]:
    """The event as sent, built once: the question as it was when the event happened (a
    `response.*` event: OpenAI's shape, which names the response and carries nothing of it)."""
    if row.payload is not None:
        return row.payload
    if row.type.startswith("response."):
        return _stored_once(runtime, row, _openai_payload(runtime, row))
    with Session(runtime.db) as session:
        question = session.get(Message, row.question_id)
        reply = session.get(Message, row.reply_id) if row.reply_id is not None else None
        if question is None:
            data = None
        else:
            session.expunge(question)
            question.status = Status(row.status)
            question.error = row.error
            if reply is not None and reply.question_content:
                question.content = reply.question_content
            data = message_json(question, reply)
    payload = {"type": row.type, "id": str(row.event_id),
               "created_at": row.event_at.isoformat().replace("+00:00", "Z"), "data": data}
    return _stored_once(runtime, row, payload)


def _openai_payload(runtime: Runtime, row: Any) -> dict[str, Any]:
    """`{"id", "object": "event", "created_at", "type", "data": {"id"}}`, as OpenAI's SDKs'
    `webhooks.unwrap()` reads it; an answer cut at its output limit is `response.incomplete`."""
    kind = row.type
    if kind == "response.completed" and row.reply_id is not None:
        with Session(runtime.db) as session:
            reply = session.get(Message, row.reply_id)
            if reply is not None and reply.finish is Finish.LENGTH:
                kind = "response.incomplete"
    return {"id": f"evt_{row.event_id.hex}", "object": "event", "created_at": int(row.event_at.timestamp()),
            "type": kind, "data": {"id": f"resp_{row.question_id.hex}"}}


def _stored_once(runtime: Runtime, row: Any, payload: dict[str, Any]) -> dict[str, Any]:
    with runtime.db.connect() as connection:  # the first build wins: every retry sends the same bytes
        stored = connection.execute(text(
            "UPDATE webhook_events SET payload = coalesce(payload, CAST(:payload AS json)) WHERE id = :id "
            "RETURNING payload"), {"payload": json.dumps(payload), "id": row.event_id}).scalar_one()
    return stored


def _post(settings: Settings, url: str, headers: dict[str, str], body: bytes) -> Attempt:
    started = time.perf_counter()

    def took() -> int:
        return int((time.perf_counter() - started) * 1000)

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as error:
        return Attempt(None, took(), f"{host} does not resolve: {error}", None)
    if not settings.webhook_allow_private:
        for address in addresses:
            reason = refused(address)
            if reason is not None:
                return Attempt(None, took(), f"refused: {host} resolves to {address}, {reason}", None)
    address = str(addresses[0])  # connect to the address checked, not to a second lookup
    timeout = urllib3.Timeout(connect=min(5.0, settings.webhook_timeout_seconds), read=settings.webhook_timeout_seconds)
    if parts.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address, port, timeout=timeout, retries=False, server_hostname=host, assert_hostname=host,
            cert_reqs="CERT_REQUIRED")
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with pool:
            response = pool.urlopen("POST", path, body=body, redirect=False, preload_content=False,
                                    headers={**headers, "Host": parts.netloc.rsplit("@", 1)[-1]})
            kept = response.read(BODY_KEPT, decode_content=True)
            response.release_conn()
    except urllib3.exceptions.HTTPError as error:
        return Attempt(None, took(), f"{type(error).__name__}: {error}"[:500], None)
    return Attempt(response.status, took(), None if 200 <= response.status < 300 else f"HTTP {response.status}",
                   kept.decode(errors="replace")[:BODY_KEPT])


def deliver(runtime: Runtime, delivery_id: str, claim: str) -> str:
    """One try of one delivery (the job's body). Returns what happened, for the job's result."""
    with runtime.db.connect() as connection:
        row = connection.execute(LOAD, {"id": delivery_id, "claim": claim}).one_or_none()
    if row is None:
        return "not_ours"  # delivered meanwhile, or claimed again by a later sweep
    body = json.dumps(_payload(runtime, row), separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "chatq-webhooks",
               "webhook-id": str(row.event_id), "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(row.secret, str(row.event_id), timestamp, body)}
    attempt = _post(runtime.settings, row.url, headers, body)
    _record(runtime, row, claim, attempt)
    log.info("webhook_attempt", delivery_id=delivery_id, event_id=str(row.event_id), status_code=attempt.status_code,
             error=attempt.error, duration_ms=attempt.duration_ms)
    return "delivered" if attempt.delivered else "failed"


def _record(runtime: Runtime, row: Any, claim: str, attempt: Attempt) -> None:
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        session.execute(text(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, duration_ms, error, response_body) "
            "VALUES (:id, now(), :status, :ms, :error, :body)"),
            {"id": row.id, "status": attempt.status_code, "ms": attempt.duration_ms, "error": attempt.error,
             "body": attempt.body})
        if attempt.delivered:
            session.execute(text(
                "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = now(), "
                "claim = NULL WHERE id = :id AND claim = :claim"), {"id": row.id, "claim": claim})
            session.execute(text("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id"),
                            {"id": row.endpoint_id})
            return
        session.execute(text(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, claim = NULL, "
            " next_attempt_at = now() + make_interval(secs => :delay), "
            " state = CASE WHEN created_at < now() - make_interval(secs => :give_up) THEN 'failed' ELSE 'pending' END "
            "WHERE id = :id AND claim = :claim"),
            {"id": row.id, "claim": claim, "delay": backoff(settings, row.attempts),
             "give_up": settings.webhook_give_up_seconds})
        session.execute(text(
            "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()), "
            " disabled_at = CASE WHEN failing_since < now() - make_interval(secs => :after) THEN now() END, "
            " disabled_reason = CASE WHEN failing_since < now() - make_interval(secs => :after) "
            "   THEN 'Every delivery has failed since ' || failing_since::text || '; the last: ' || :error END "
            "WHERE id = :id"),
            {"id": row.endpoint_id, "after": settings.webhook_disable_after_seconds, "error": attempt.error or ""})
