"""Operations endpoints: /health (dependencies) and /livez (this process)."""

from __future__ import annotations

from typing import Any

import requests
import structlog
from flask import Blueprint, current_app
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from models.coordination.model_pool import ModelServer, server_states

from .schemas import Alive, Health
from .services import reader, services
from .spec import operation

bp = Blueprint("ops", __name__)
log = structlog.get_logger(__name__)


@bp.get("/livez")
@operation("This process serves", responses={200: Alive}, authenticated=False)
def livez() -> dict[str, str]:
    return {"status": "alive", "server_id": current_app.config["SERVER_ID"]}


@bp.get("/health")
@operation("Postgres and Redis reachable from this node", responses={200: Health, 503: Health},
           authenticated=False)
def health() -> tuple[dict[str, Any], int, dict[str, str]]:
    database = broker = "connected"
    try:
        reader().execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        log.warning("health_database_down", error=str(error).splitlines()[0])
        database = "disconnected"
    try:
        services().redis.ping()
    except RedisError as error:
        log.warning("health_broker_down", error=str(error))
        broker = "disconnected"
    healthy = database == broker == "connected"
    settings = services().settings
    servers = settings.model_servers() if settings.engine == "openai" else []
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "database": database,
        "broker": broker,
        # Reported, never a reason to take this node out: a web node serves without a model.
        "engine": _engine(servers),
        "model_servers": _model_servers(servers) if broker == "connected" else [],
        "server_id": current_app.config["SERVER_ID"],
    }
    return body, (200 if healthy else 503), ({} if healthy else {"Retry-After": "5"})


def _model_servers(servers: list[ModelServer]) -> list[dict[str, Any]]:
    """Each server of the pool as the workers left it in Redis: slots in use, cooling or ready."""
    try:
        return [state.shown() for state in server_states(services().redis, servers)] if servers else []
    except RedisError as error:
        log.warning("health_model_servers_unread", error=str(error))
        return []


def _engine(servers: list[ModelServer]) -> str:
    """`builtin`, or whether the pool's first model server answers (its model list, within half a
    second: a slow model server must not make the node's own health probe time out; the others'
    state is in `model_servers`)."""
    if not servers:
        return "builtin"
    first = servers[0]
    headers = {"Authorization": f"Bearer {first.api_key}"} if first.api_key else {}
    try:
        response = requests.get(first.url.rstrip("/") + "/models", headers=headers, timeout=0.5)
    except requests.RequestException as error:
        log.warning("health_engine_unreachable", error=str(error).splitlines()[0][:200])
        return "unreachable"
    return "reachable" if response.status_code < 500 else "unreachable"
