"""`GET /v1/models`: the models this service answers with — the built-in assistant, or each model
of the pool (LLM_SERVERS)."""

from __future__ import annotations

from typing import Any

from ..services import services
from ..spec import operation
from . import bp
from .schemas import ModelList, OpenAIError

BUILTIN_MODEL = "chatq-assistant"
CREATED = 1_764_547_200  # 2025-12-01: when chatq first answered; OpenAI's field is a Unix time


def served_models() -> list[str]:
    settings = services().settings
    if settings.engine == "builtin":
        return [BUILTIN_MODEL]
    return list(dict.fromkeys(server.model for server in settings.model_servers()))


@bp.get("/models")
@operation("OpenAI: the models this service answers with", responses={200: ModelList}, errors=OpenAIError)
def list_models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": CREATED, "owned_by": "chatq"}
                                       for name in served_models()]}
