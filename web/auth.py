"""Identity: a bearer JWT, HS256-signed with AUTH_SECRET; the `sub` claim is the user id."""

from __future__ import annotations

import time

import jwt
from flask import current_app, g, request

from .problems import Problem

MAX_USER_ID = 128


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="chatq"'})


def authenticate() -> str:
    """The user id of this request, or a 401 problem. Called before every /api/ view."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Send 'Authorization: Bearer <token>'.")
    try:
        claims = jwt.decode(
            token.strip(),
            current_app.config["AUTH_SECRET"],
            algorithms=["HS256"],
            options={"require": ["sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("The token is malformed or its signature does not verify.") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_USER_ID:
        raise _unauthorized("The token's 'sub' claim must be a user id of 1 to 128 characters.")
    g.user = subject
    return subject


def issue_token(secret: str, user: str, *, ttl_seconds: int = 7 * 24 * 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl_seconds}, secret, algorithm="HS256")
