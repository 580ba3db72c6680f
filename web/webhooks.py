"""The webhook endpoints a user registers (contract: "Webhooks"): create (the signing secret shown
once), list, delete, each endpoint's deliveries with every try, and re-sending one. Delivery
itself is the worker's (worker/webhooks.py); what is sent, the outbox's (models/sql/outbox.py)."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from flask import Blueprint, g
from sqlalchemy import delete, func, select, update

from models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from models.policy.addresses import url_problem
from models.representation import dump
from models.sql.queries import parse_uuid

from . import schemas
from .auth import authenticate
from .inputs import json_body
from .problems import Problem
from .services import reader, services, transaction
from .spec import operation
from .writes import refuse_while_erasing

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks")
MAX_ENDPOINTS = 10  # per user
ENDPOINTS_LOCK = 7_362_202  # advisory-lock namespace: "a user's endpoints are being counted" (key: the user)
DELIVERIES_SHOWN = 50


@bp.before_request
def _identify() -> None:
    authenticate()


def endpoint_json(row: WebhookEndpoint, model: type[schemas.WebhookOut] = schemas.WebhookOut,
                  **extra: Any) -> dict[str, Any]:
    return dump(model(id=str(row.id), url=row.url, events=list(row.events), created_at=row.created_at,
                      failing_since=row.failing_since, disabled_at=row.disabled_at,
                      disabled_reason=row.disabled_reason, **extra))


def _endpoint_or_404(session: Any, webhook_id: str) -> WebhookEndpoint:
    ident = parse_uuid(webhook_id)
    row = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.id == ident,
                                                        WebhookEndpoint.user_id == g.user)).one_or_none() \
        if ident is not None else None
    if row is None:
        raise Problem(404, "No such webhook.")
    return row


@bp.post("")
@operation("Register an endpoint; the answer carries its signing secret, shown only this once",
           body=schemas.NewWebhook, responses={201: schemas.WebhookCreated})
def create_webhook() -> tuple[dict[str, Any], int]:
    body = json_body(schemas.NewWebhook)
    problem = url_problem(body.url, allow_private=services().settings.webhook_allow_private)
    if problem is not None:
        raise Problem(422, f"url: {problem}", slug="invalid-field")
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        # Count and insert under the user's lock: concurrent registrations take turns, so the
        # count each sees includes the others' (a plain count-then-insert let 30 at once make 14).
        session.execute(select(func.pg_advisory_xact_lock(ENDPOINTS_LOCK, func.hashtext(g.user))))
        count = session.scalar(select(func.count()).where(WebhookEndpoint.user_id == g.user))
        if count >= MAX_ENDPOINTS:
            raise Problem(409, f"A user may register at most {MAX_ENDPOINTS} webhooks.", slug="too-many-webhooks")
        row = WebhookEndpoint(user_id=g.user, url=body.url, events=sorted(set(body.events)),
                              secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
        session.add(row)
    return endpoint_json(row, schemas.WebhookCreated, secret=row.secret), 201


@bp.get("")
@operation("The user's webhooks (without their secrets)", responses={200: schemas.WebhookList})
def list_webhooks() -> dict[str, Any]:
    rows = reader().scalars(select(WebhookEndpoint).where(WebhookEndpoint.user_id == g.user)
                            .order_by(WebhookEndpoint.created_at))
    return {"items": [endpoint_json(row) for row in rows]}


@bp.delete("/<webhook_id>")
@operation("Delete a webhook and its pending deliveries", responses={204: None})
def delete_webhook(webhook_id: str) -> tuple[str, int]:
    with transaction() as session:
        row = _endpoint_or_404(session, webhook_id)
        session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == row.id))
    return "", 204


@bp.get("/<webhook_id>/deliveries")
@operation("The endpoint's latest deliveries, each with every try (status, duration, error)",
           responses={200: schemas.DeliveryList})
def list_deliveries(webhook_id: str) -> dict[str, Any]:
    session = reader()
    endpoint = _endpoint_or_404(session, webhook_id)
    rows = session.execute(
        select(WebhookDelivery, WebhookEvent.type).join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.created_at.desc()).limit(DELIVERIES_SHOWN)).all()
    tries: dict[Any, list[WebhookAttempt]] = {row.id: [] for row, _type in rows}
    if tries:
        for attempt in session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(tries)))
                                       .order_by(WebhookAttempt.attempted_at)):
            tries[attempt.delivery_id].append(attempt)
    return {"items": [dump(schemas.DeliveryOut(
        id=str(row.id), event_id=str(row.event_id), type=kind, state=row.state, attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.state == "pending" else None, created_at=row.created_at,
        delivered_at=row.delivered_at,
        tries=[schemas.AttemptOut(attempted_at=a.attempted_at, status_code=a.status_code, duration_ms=a.duration_ms,
                                  error=a.error, response_body=a.response_body) for a in tries[row.id]],
    )) for row, kind in rows]}


@bp.post("/<webhook_id>/deliveries/<delivery_id>/retry")
@operation("Send a delivery again now (delivered, failed or pending); re-enables a disabled endpoint",
           responses={202: schemas.DeliveryList})
def retry_delivery(webhook_id: str, delivery_id: str) -> tuple[dict[str, Any], int]:
    with transaction() as session:
        endpoint = _endpoint_or_404(session, webhook_id)
        ident = parse_uuid(delivery_id)
        again = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == ident, WebhookDelivery.endpoint_id == endpoint.id)
            .values(state="pending", next_attempt_at=func.now(), claim=None)
            .returning(WebhookDelivery.id)).first() if ident is not None else None
        if again is None:
            raise Problem(404, "No such delivery.")
        session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id)
                        .values(disabled_at=None, disabled_reason=None))
    return {"items": []}, 202
