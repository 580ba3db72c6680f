"""A user's API keys (`/api/v1/keys`): what a server-side app sends instead of a JWT it would have
to sign again every hour. Made (the key shown once), listed (never the key) and revoked; only a
SHA-256 of each is stored (web/auth.py finds a request's key by it). Making and revoking a key
takes a JWT: a leaked key cannot make itself another, nor outlive its revocation."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from flask import Blueprint, g
from sqlalchemy import delete, func, select

from models import ApiKey
from models.sql.queries import parse_uuid

from . import schemas
from .auth import API_KEY_PREFIX, authenticate, key_hash
from .inputs import json_body
from .problems import Problem
from .services import reader, transaction
from .spec import operation
from .writes import refuse_while_erasing

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")
MAX_KEYS = 20  # per user
KEYS_LOCK = 7_362_205  # advisory-lock namespace: "a user's keys are being counted" (key: the user)


@bp.before_request
def _identify() -> None:
    authenticate()


def _with_a_token() -> None:
    if g.get("by_key"):
        raise Problem(403, "API keys are made and revoked with a JWT, not with a key: a leaked key cannot "
                      "make itself another.", slug="key-not-allowed")


def _key_json(row: ApiKey, **extra: Any) -> dict[str, Any]:
    return schemas.KeyOut(id=str(row.id), name=row.name, created_at=row.created_at, **extra).model_dump(mode="json")


@bp.post("")
@operation("Make an API key: shown once, stored as a hash; it acts as the user", body=schemas.NewKey,
           responses={201: schemas.KeyCreated})
def create_key() -> tuple[dict[str, Any], int]:
    _with_a_token()
    body = json_body(schemas.NewKey)
    key = API_KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        # Counted and inserted under the user's lock: concurrent requests take turns.
        session.execute(select(func.pg_advisory_xact_lock(KEYS_LOCK, func.hashtext(g.user))))
        if session.scalar(select(func.count()).where(ApiKey.user_id == g.user)) >= MAX_KEYS:
            raise Problem(409, f"A user may have at most {MAX_KEYS} API keys; revoke one first.",
                          slug="too-many-keys")
        row = ApiKey(user_id=g.user, name=body.name, key_hash=key_hash(key), tier=g.get("tier"))
        session.add(row)
    return schemas.KeyCreated(id=str(row.id), name=row.name, created_at=row.created_at,
                              key=key).model_dump(mode="json"), 201


@bp.get("")
@operation("The user's API keys (never the keys themselves)", responses={200: schemas.KeyList})
def list_keys() -> dict[str, Any]:
    rows = reader().scalars(select(ApiKey).where(ApiKey.user_id == g.user).order_by(ApiKey.created_at, ApiKey.id))
    return {"items": [_key_json(row) for row in rows]}


@bp.delete("/<key_id>")
@operation("Revoke an API key: the next request with it is 401", responses={204: None})
def revoke_key(key_id: str) -> tuple[str, int]:
    _with_a_token()
    ident = parse_uuid(key_id)
    deleted = ident is not None and reader().execute(
        delete(ApiKey).where(ApiKey.id == ident, ApiKey.user_id == g.user).returning(ApiKey.id)).first()
    if not deleted:
        raise Problem(404, "No such API key.")
    return "", 204
