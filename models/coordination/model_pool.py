"""The pool of model servers (LLM_SERVERS): what an operator configures, and the state every worker
shares about it in Redis — the slots in use on each server, its cooldown after failures, and which
server answered a conversation last (docs/models.md, "A pool of model servers").

Here, not in worker/, because web's /health reports each server's state from the same keys.
Everything in Redis is a signal with a TTL: losing it (a Redis restart) forgets held slots and
cooldowns, never a message; the worker that holds a slot renews it while it uses it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Group = Literal["primary", "fallback"]


class ModelServer(BaseModel):
    """One server of the pool: its OpenAI-compatible base URL (…/v1), the model name it is asked
    for, and how many requests it runs at once (llama.cpp's --parallel, vLLM's batch): no more
    than `slots` are ever sent to it, across every worker. A `fallback` server is used only when no
    primary one can answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1, max_length=200)
    slots: int = Field(ge=1, le=10_000)
    group: Group = "primary"
    api_key: str = ""
    # llama.cpp's server: each request names the slot chatq holds (`id_slot`), so a conversation's
    # turns land in the slot that has its prompt cached (else llama.cpp picks one by similarity of
    # prompt, and conversations that share a long system prompt take each other's). `slots` must
    # then be its --parallel.
    pin_slots: bool = False

    @property
    def key(self) -> str:
        """Its name in Redis keys and metrics labels: stable across processes, no credentials."""
        return hashlib.sha256(f"{self.url}\n{self.model}".encode()).hexdigest()[:12]

    @property
    def shown_url(self) -> str:
        """The URL without credentials, for logs, errors and /health."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_SERVERS = TypeAdapter(list[ModelServer])
SINGLE_SERVER_SLOTS = 64  # LLM_BASE_URL alone: a pool of one, as many requests as workers send


def parse_servers(raw: str) -> list[ModelServer]:
    """LLM_SERVERS: a JSON list of {"url", "model", "slots", "group"?, "api_key"?, "pin_slots"?}; a ValueError
    names what is wrong."""
    try:
        servers = _SERVERS.validate_json(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(problems) from None
    if not servers:
        raise ValueError("name at least one server")
    if not any(server.group == "primary" for server in servers):
        raise ValueError("at least one server must be in the primary group")
    if len({server.key for server in servers}) != len(servers):
        raise ValueError("a server (url and model) is named twice")
    return servers


# Redis keys ------------------------------------------------------------------------------------


def slots_key(server: ModelServer) -> str:
    """A sorted set: a held slot's token -> when its lease runs out (ms, Redis's clock)."""
    return f"chatq:llm:{server.key}:slots"


def slot_uses_key(server: ModelServer) -> str:
    """A hash: slot index -> when it was last taken (ms, Redis's clock), to reuse the oldest."""
    return f"chatq:llm:{server.key}:slot-uses"


def health_key(server: ModelServer) -> str:
    """A hash: consecutive failures, and until when (s, Redis's clock) the server is cooling down."""
    return f"chatq:llm:{server.key}:health"


def probe_key(server: ModelServer) -> str:
    """Held by the one request that tries a server whose cooldown is over."""
    return f"chatq:llm:{server.key}:probe"


def affinity_key(conversation_id: uuid.UUID | str) -> str:
    """Which server (and which of its slots, "<key>:<index>") answered the conversation last: its
    next turn goes there (a warm prompt cache)."""
    return f"chatq:llm:affinity:{conversation_id}"


AFFINITY_TTL_SECONDS = 3600  # longer than any server keeps a prompt cached


@dataclass(frozen=True)
class ServerState:
    server: ModelServer
    in_use: int
    failures: int
    cooling_for: float  # seconds until its cooldown ends (0: none)

    @property
    def state(self) -> Literal["ready", "cooling", "probing"]:
        if self.cooling_for > 0:
            return "cooling"
        return "probing" if self.failures else "ready"

    def shown(self) -> dict[str, Any]:
        return {"url": self.server.shown_url, "model": self.server.model, "group": self.server.group,
                "slots": self.server.slots, "in_use": self.in_use, "state": self.state, "failures": self.failures}


def server_states(client: redis.Redis, servers: list[ModelServer]) -> list[ServerState]:
    """Each server's slots in use and health, in one round trip (no request to a model server),
    judged by Redis's clock, as the slots' leases and the cooldowns are written."""
    with client.pipeline(transaction=False) as pipe:
        for server in servers:
            pipe.zrange(slots_key(server), 0, -1, withscores=True)
            pipe.hgetall(health_key(server))
        pipe.time()
        answers = pipe.execute()
    seconds, micros = answers[-1]
    redis_now = seconds + micros / 1e6
    states = []
    for index, server in enumerate(servers):
        leases, health = answers[2 * index], answers[2 * index + 1]
        in_use = sum(1 for _token, ends_ms in leases if ends_ms > redis_now * 1000)  # not run out yet
        until = float(health.get(b"until", 0) or 0)
        states.append(ServerState(server, in_use, int(health.get(b"failures", 0) or 0), max(0.0, until - redis_now)))
    return states
