"""Identity: a bearer JWT or API key. HS256 tokens are signed with AUTH_SECRET; tokens of an
external identity provider (RS256, EdDSA) are verified against its JWKS (AUTH_JWKS_URL), with
optional issuer and audience checks; the `sub` claim is the user id. An API key (web/keys.py) is
found by its hash and acts as the user who made it."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import jwt
import structlog
from flask import Flask, current_app, g, request
from sqlalchemy import text

from models import Settings

from .problems import Problem
from .services import reader

MAX_USER_ID = 128
ASYMMETRIC = ("RS256", "EdDSA")


class Verifier:
    """Checks tokens for one web process. Its JWKS client caches the provider's *public keys* for
    AUTH_JWKS_TTL_SECONDS and refetches them when a token names a key id it has not seen (a key
    rotation), at most once per AUTH_JWKS_COOLDOWN_SECONDS; it holds nothing about users."""

    def __init__(self, settings: Settings, secret: str) -> None:
        self.secret = secret
        self.issuer = settings.auth_issuer or None
        self.audience = settings.auth_audience or None
        # Outside dev mode a token must say when it expires, and not too far ahead.
        self.required = ["sub"] if settings.dev_mode else ["sub", "exp"]
        self.max_lifetime = settings.auth_max_token_lifetime_seconds
        self.jwks = (
            jwt.PyJWKClient(settings.auth_jwks_url, cache_keys=True, lifespan=settings.auth_jwks_ttl_seconds,
                            cooldown_duration=settings.auth_jwks_cooldown_seconds, timeout=5)
            if settings.auth_jwks_url
            else None
        )

    def claims(self, token: str) -> dict[str, Any]:
        # Without an identity provider only HS256 is accepted, and jwt.decode refuses any other
        # header itself: the token is parsed once, not twice (parsing is most of a check's CPU).
        algorithm = jwt.get_unverified_header(token).get("alg") if self.jwks is not None else "HS256"
        if algorithm == "HS256" and self.secret:
            key: Any = self.secret
        elif algorithm in ASYMMETRIC and self.jwks is not None:
            try:
                signing_key = self.jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as error:
                raise Problem(503, "The identity provider's keys cannot be fetched; retry later.",
                              headers={"Retry-After": "5"}) from error
            except jwt.PyJWKClientError as error:
                raise jwt.InvalidTokenError(str(error)) from error
            # The key's kind decides the algorithm, never the token's header: an RS256 header on
            # an Ed25519 key (or the reverse) is refused, not tried.
            if signing_key.algorithm_name != algorithm:
                raise jwt.InvalidAlgorithmError(f"key {signing_key.key_id!r} does not sign {algorithm!r}")
            key = signing_key.key
        else:
            raise jwt.InvalidAlgorithmError(f"tokens signed with {algorithm!r} are not accepted")
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=self.issuer,
            audience=self.audience,
            options={"require": self.required, "verify_aud": self.audience is not None},
        )
        expires = claims.get("exp")
        if self.max_lifetime and isinstance(expires, int | float) and expires - time.time() > self.max_lifetime:
            raise jwt.InvalidTokenError("the token is valid for longer than AUTH_MAX_TOKEN_LIFETIME_SECONDS")
        return claims


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["chatq.auth"] = Verifier(settings, app.config["AUTH_SECRET"])


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="chatq"'})


def authenticate() -> str:
    """The user id of this request, or a 401 problem. Called before every /api/ and /v1/ view. The
    bearer is a JWT or one of the user's API keys (`g.by_key` says which)."""
    if "user" in g:
        return g.user
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Send 'Authorization: Bearer <token>' (a JWT, or an API key).")
    if token.strip().startswith(API_KEY_PREFIX):
        return _by_key(token.strip())
    try:
        claims = current_app.extensions["chatq.auth"].claims(token.strip())
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
        raise _unauthorized("The token was issued by or for someone else.") from None
    except jwt.MissingRequiredClaimError as error:
        raise _unauthorized(f"The token has no '{error.claim}' claim.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("The token is malformed, too long-lived, or its signature does not verify.") from None
    subject = claims.get("sub")
    if not _is_user_id(subject):
        raise _unauthorized("The token's 'sub' claim must be a user id of 1 to 128 printable characters.")
    g.user = subject
    g.tier = claims.get("tier")  # the user's weight in the scheduler (Settings.weight_of)
    structlog.contextvars.bind_contextvars(user=subject)
    return subject


# An API key: the prefix, then 32 random bytes in base64url. A JWT never starts with it ("eyJ").
API_KEY_PREFIX = "chatq-"
_KEY = re.compile(r"^chatq-[A-Za-z0-9_-]{43}$")
_KEY_OWNER = text("SELECT user_id, tier FROM api_keys WHERE key_hash = :hash")


def key_hash(key: str) -> str:
    """What is stored of a key: a SHA-256 (a key is 256 random bits: no salt or slow hash needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _by_key(key: str) -> str:
    owner = reader().execute(_KEY_OWNER, {"hash": key_hash(key)}).first() if _KEY.match(key) else None
    if owner is None:
        raise _unauthorized("The API key is not known (revoked, or never made).")
    g.user, g.tier, g.by_key = owner.user_id, owner.tier, True
    structlog.contextvars.bind_contextvars(user=owner.user_id)
    return owner.user_id


def _is_user_id(subject: object) -> bool:
    """1-128 printable characters that are valid text: no NUL or control characters, and no lone
    surrogates (JSON can carry "\\ud800"; Postgres cannot store it)."""
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_USER_ID or not subject.isprintable():
        return False
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def issue_token(secret: str, user: str, *, ttl_seconds: int = 7 * 24 * 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl_seconds}, secret, algorithm="HS256")
