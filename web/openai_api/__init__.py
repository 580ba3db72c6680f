"""OpenAI's API in front of chatq (`/v1`): an app written against OpenAI's SDKs uses chatq by setting
the SDK's base URL to chatq's `/v1` and its API key to a chatq key (or a JWT). Behind it stand the
same queue, fair share, model pool, quotas and guarantees as behind `/api/v1`: a `/v1` request is
one more way to post a message and wait for its reply, never a second engine. Errors are in
OpenAI's shape (web/problems.py), so the SDKs raise their own exception classes.

docs/openai.md says which calls and fields are honoured, accepted and ignored, or refused."""

from __future__ import annotations

from flask import Blueprint, Response, g

from ..auth import authenticate

bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.before_request
def _identify() -> None:
    authenticate()


@bp.after_request
def _say_replayed(response: Response) -> Response:
    """A create retried with its Idempotency-Key stored nothing: it says so, as /api/v1 does."""
    if g.get("idempotent_replayed"):
        response.headers["Idempotent-Replayed"] = "true"
    return response


from . import chat, conversations, models, responses  # noqa: E402,F401  (their routes, on the blueprint above)
