"""chatq's web front: authenticate, store the message, enqueue its id, answer 202."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request

from models import Settings
from models.process.logs import configure_logging

from . import (
    api,
    auth,
    cli,
    control,
    keys,
    limits,
    metrics,
    openai_api,
    openapi,
    ops,
    outages,
    page,
    problems,
    request_id,
    security,
    services,
    user_data,
    webhooks,
)
from .waiting import admission, stream

MAX_BODY_BYTES = 64 * 1024  # the contract's limit on a request body (413 past it)


def create_app(test_config: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """The web app. `settings` defaults to the environment's (tests pass their own instead of
    editing os.environ); `test_config` overrides Flask config keys."""
    app = outages.RetryingReads(__name__)
    app.json.sort_keys = False  # keep the contract's field order
    settings = settings or Settings.from_env()
    app.config.from_mapping(
        AUTH_SECRET=settings.require_auth_secret(),
        ERASURE_SECRET=settings.require_erasure_secret(),  # checked now: web refuses to start without one
        SERVER_ID=settings.server_id,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        DB_POOL_SIZE=10,
        DEV_TOKENS=settings.dev_mode,
    )
    if test_config:
        app.config.update(test_config)
    configure_logging()

    services.init_app(app, settings, on_round_trip=metrics.count_round_trip)
    admission.init_app(app, settings)
    auth.init_app(app, settings)
    limits.init_app(app, settings)
    request_id.init_app(app)
    metrics.init_app(app)
    problems.register_error_handlers(app)
    outages.init_app(app)
    cli.init_app(app)
    security.init_app(app)
    app.register_blueprint(page.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(control.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(user_data.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(openai_api.bp)

    @app.after_request
    def _conditional_get(response: Response) -> Response:
        # Plain pollers: an unchanged answer costs a 304 and no body.
        if request.method == "GET" and response.status_code == 200 and response.is_json:
            response.add_etag()
            response.make_conditional(request)
        return response

    return app
