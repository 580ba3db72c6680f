"""Configuration: the environment, read in one place.

Every process (web, worker, beat, flower, migrations) builds a `Settings` from `os.environ` once
at start-up (pydantic-settings: each field from the variable of its name, upper-cased, parsed and
checked by its type). Nothing else in the code reads the environment; tests pass a mapping of their
own to `Settings.from_env` instead of editing `os.environ`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..coordination.model_pool import SINGLE_SERVER_SLOTS, ModelServer, parse_servers
from .connections import sentinel_addresses


def embedded_database_url(port: int) -> str:
    """The embedded PostgreSQL that `make run` / `make test` start (scripts/devstack.py)."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/chatq"


def embedded_redis_url(port: int) -> str:
    """The embedded redis-server that `make run` / `make test` start (scripts/devstack.py)."""
    return f"redis://127.0.0.1:{port}/0"


# What a process started outside scripts/devstack.py (which always passes the URLs) falls back on:
# the first checkout's ports. CHATQ_PG_PORT / CHATQ_REDIS_PORT name others.
EMBEDDED_DATABASE_URL = embedded_database_url(int(os.environ.get("CHATQ_PG_PORT") or 55432))
EMBEDDED_REDIS_URL = embedded_redis_url(int(os.environ.get("CHATQ_REDIS_PORT") or 56379))
DEV_AUTH_SECRET = "chatq-dev-secret-do-not-use-in-production"  # noqa: S105 - only in explicit dev mode
WELL_KNOWN_SECRETS = frozenset({"", "secret", "changeme", "change-me", "password", DEV_AUTH_SECRET})


class ConfigError(RuntimeError):
    """The environment does not describe a process that may start."""


# Fields read from a variable of another name than their own, upper-cased.
ENV_NAMES = {"dev_mode": "CHATQ_DEV"}
# Fields whose empty variable means "the default" (for other strings, empty is a value: RATE_LIMIT=""
# turns rate limiting off). An empty number or flag is always the default.
EMPTY_IS_DEFAULT = frozenset({"database_url", "redis_url", "server_id"})


def _variable(name: str) -> str:
    return ENV_NAMES.get(name, name.upper())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        alias_generator=_variable,  # the variable each field is read from
        populate_by_name=True,
        case_sensitive=True,
        extra="ignore",  # the environment holds much else
    )

    database_url: str = EMBEDDED_DATABASE_URL
    redis_url: str = EMBEDDED_REDIS_URL
    # Redis under Sentinel: the sentinels ("host:port,host:port") and the master's name; every use
    # of Redis then follows that master (REDIS_URL gives only the database number and password).
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    auth_secret: str = ""
    # Keys the digest an erasure's record keeps of its user (models/sql/erasure.py); AUTH_SECRET
    # when unset. A deployment that verifies only an identity provider's tokens must set it.
    erasure_secret: str = ""
    # Tokens from an external identity provider, verified against its JWKS (RS256, EdDSA).
    auth_jwks_url: str = ""
    auth_jwks_ttl_seconds: int = 300
    # An unknown key id triggers at most one refetch per this many seconds: a rotation is picked up
    # quickly, and tokens with made-up key ids cannot make us hammer the provider.
    auth_jwks_cooldown_seconds: float = 10.0
    auth_issuer: str = ""
    auth_audience: str = ""
    # The longest a token may still be valid for (its exp, counted from now); 0 = no cap.
    auth_max_token_lifetime_seconds: int = 31 * 24 * 3600
    dev_mode: bool = False
    flower_basic_auth: str = ""
    port: int = 8000
    # Where web listens ("": every interface behind a load balancer, but loopback only in dev mode,
    # whose token endpoint and well-known secret must not be reachable from the network).
    bind_host: str = ""
    worker_metrics_port: int = 9808
    server_id: str = Field(default_factory=socket.gethostname)
    # Reply engine.
    engine: str = "builtin"
    engine_delay_ms: int = 0
    # The built-in engine sends its answer a word at a time, this far apart (0: all at once), so
    # that stop, resume and regenerate can be seen and tested without a model.
    engine_stream_delay_ms: int = 0
    # ENGINE=openai: any server speaking the OpenAI Chat Completions protocol.
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = 60.0
    llm_system_prompt: str = ""
    llm_stream: bool = True
    # The model's context window in tokens (0: what the server reports, else 8192) and the most a
    # reply may add (sent as max_tokens): the history sent is what fits between the two.
    llm_context_tokens: int = 0
    llm_max_tokens: int = 1024
    # A pool of model servers (models/coordination/model_pool.py; docs/models.md): a JSON list of {"url",
    # "model", "slots", "group"?, "api_key"?}. Empty: LLM_BASE_URL + LLM_MODEL are a pool of one.
    llm_servers: str = ""
    # A slot held on a server lives this long unless its worker renews it (a dead worker's slot is
    # free again within it); a conversation waits this long for the server that answered its last
    # turn (its prompt cache is warm there) before any server will do; a request waits this long
    # for a free slot on any server before its message goes back to the queue.
    llm_slot_ttl_seconds: float = Field(default=10.0, gt=0)
    llm_affinity_wait_seconds: float = Field(default=2.0, ge=0)
    llm_slot_wait_seconds: float = Field(default=30.0, gt=0)
    # A server that failed (no connection, a 5xx, a timeout) cools down this long, doubled for
    # each failure in a row up to the cap; then one request probes it back.
    llm_cooldown_seconds: float = Field(default=2.0, gt=0)
    llm_cooldown_cap_seconds: float = Field(default=60.0, gt=0)
    # Delivery: how long a claim on a conversation lives without renewal, how often the sweeper
    # runs, how long a queued message may wait before it is enqueued again, and when to give up.
    # Short, and renewed every third of it while a generation runs: a dead worker's conversation
    # resumes within about LEASE_SECONDS + SWEEP_INTERVAL_SECONDS (BENCHMARKS.md, "Leases").
    lease_seconds: float = 6.0
    # The hard limit of one generation (0 = the engine's default, see `task_time_limit`).
    task_time_limit_seconds: float = 0.0
    sweep_interval_seconds: float = 1.0
    # A worker told to stop lets a generation run this long, then gives its message back to the
    # queue for another worker (keep it below the platform's grace period: compose, Kubernetes).
    worker_shutdown_grace_seconds: float = 20.0
    # A file the worker's event loop touches every 10 s, for a liveness probe that costs no broker
    # round trip (empty: none).
    worker_heartbeat_file: str = ""
    # Webhooks: the first retry's delay (each doubles, with jitter, up to the cap), how long a
    # delivery is retried, when an endpoint failing throughout is disabled, the per-request timeout,
    # and whether endpoints may be on private addresses (development and tests only).
    webhook_backoff_base_seconds: float = 5.0
    webhook_backoff_cap_seconds: float = 6 * 3600.0
    webhook_give_up_seconds: float = 26 * 3600.0
    webhook_disable_after_seconds: float = 5 * 86400.0
    webhook_timeout_seconds: float = 10.0
    webhook_allow_private: bool = False
    max_attempts: int = 5
    answer_deadline_seconds: float = 600.0
    # Waiting requests (long-polls, event streams) are woken by Redis notifications. While the
    # notification connection is up, a waiter still re-reads Postgres every `recheck_seconds` (a
    # safety net for a notification lost on the publishing side); while it is down, every
    # `fallback_recheck_seconds`. A long safety interval is what lets a process hold thousands of
    # waits: 5,000 waiters re-reading every second would be 5,000 queries a second of nothing. A
    # long-poll (30 s at most) therefore reads Postgres when it starts and when it is woken.
    recheck_seconds: float = 60.0
    fallback_recheck_seconds: float = 1.0
    # Admission of waiting requests, per web process: past `max_waits` a new one is answered 503
    # at once; one user may hold at most `max_waits_per_user` of them (429 past that).
    max_waits: int = 5000
    max_waits_per_user: int = 20
    # gunicorn: processes per node, and how long a client may leave its socket silent (a slow or
    # idle connection, slowloris) before it is closed.
    web_concurrency: int = 2
    client_timeout_seconds: float = 30.0
    # Server-Sent Events: a comment this often keeps proxies from closing an idle stream.
    sse_heartbeat_seconds: float = 10.0
    # Rate limiting of POSTs, per user, shared by all web nodes through Redis ("" turns it off).
    rate_limit: str = "120/minute"
    # Per-user daily quotas (UTC days), across every node (0: none): messages sent (and
    # regenerated), and model tokens (prompt + completion) used.
    quota_messages_per_day: int = 0
    quota_tokens_per_day: int = 0
    # ... and of reads (GETs of the API, long-polls and streams included).
    read_rate_limit: str = "600/minute"
    # The scheduler (docs/scheduler.md): each user's weight by the token's `tier` claim
    # ("free=1,pro=4"; a user without one, or with a tier not named, weighs 1); how many messages
    # one user may have waiting (a POST past it answers 429; 0: no cap) and generating at once
    # across the service (0: no cap); how long a batch message waits before it competes with
    # interactive ones.
    tier_weights: str = ""
    max_queued_per_user: int = 100
    max_generations_per_user: int = 0
    batch_age_seconds: float = 300.0
    # A user's data (docs/api.md): the text-search configuration of search (read by migration 0008
    # when it builds the search column, and by every search), and how many days a conversation is
    # kept after its last message (0: for ever; a conversation's own ttl_days may only shorten it).
    search_config: str = Field(default="english", pattern=r"^[a-z_]+$")
    retention_days: int = Field(default=0, ge=0)
    # An export holds one of its web process's database connections for as long as it streams:
    # at most `max_exports` stream from one web process at once (503 past that), one user's
    # `max_exports_per_user` of them (429), so exports never take the pool from other requests.
    max_exports: int = Field(default=3, ge=1)
    max_exports_per_user: int = Field(default=1, ge=1)
    # A search of a long history ranks thousands of messages: at most `max_searches` run in one web
    # process at once (503 past that), one user's `max_searches_per_user` (429), so searches never
    # take the pool from the requests of other users.
    max_searches: int = Field(default=4, ge=1)
    max_searches_per_user: int = Field(default=2, ge=1)
    # The longest one statement of a web request may run (ms; 0: no bound): past it Postgres
    # cancels it and the request answers 503, rather than holding a connection of the pool.
    web_statement_timeout_ms: int = Field(default=10_000, ge=0)
    # How often beat runs the forget round (retention, and erasures whose worker died).
    forget_interval_seconds: float = Field(default=60.0, gt=0)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_parse(cls, value: str) -> str:
        sentinel_addresses(value)  # a ValueError names what is wrong
        return value

    @model_validator(mode="after")
    def _sentinels_name_their_master(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER: the name the sentinels know the master by")
        return self

    @field_validator("llm_servers")
    @classmethod
    def _servers_parse(cls, value: str) -> str:
        if value:
            parse_servers(value)  # a ValueError names what is wrong
        return value

    @field_validator("tier_weights")
    @classmethod
    def _tiers_parse(cls, value: str) -> str:
        parse_tier_weights(value)  # a ValueError names what is wrong
        return value

    def weight_of(self, tier: object) -> float:
        """A user's weight in the scheduler, from their token's `tier` claim."""
        return parse_tier_weights(self.tier_weights).get(tier, 1.0) if isinstance(tier, str) else 1.0

    @property
    def auth_secret_or_dev(self) -> str:
        return self.auth_secret or (DEV_AUTH_SECRET if self.dev_mode else "")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty variable leaves the default, but for a string that may be empty on purpose."""
        if value == "" and info.field_name is not None:
            declared = cls.model_fields[info.field_name]
            if declared.annotation is not str or info.field_name in EMPTY_IS_DEFAULT:
                return declared.get_default(call_default_factory=True)
        return value

    @model_validator(mode="after")
    def _dev_mode_listens_on_loopback(self) -> Settings:
        if not self.bind_host:  # frozen, but this is its making
            object.__setattr__(self, "bind_host", "127.0.0.1" if self.dev_mode else "0.0.0.0")  # noqa: S104
        return self

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable a field is read from: its name, upper-cased (CHATQ_DEV for
        dev_mode)."""
        return _variable(name)

    @classmethod
    def variables(cls) -> list[str]:
        """Every variable chatq reads: the fields above, declared once."""
        return [cls.variable(name) for name in cls.model_fields]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of `env` (the process's environment when None), or a ConfigError that names
        each variable that does not parse."""
        try:
            if env is None:
                return cls()
            return cls.model_validate({name: env[name] for name in cls.variables() if name in env})
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']} "
                                 f"(not {item['input']!r})" for item in error.errors())
            raise ConfigError(problems) from None

    @property
    def task_time_limit(self) -> float:
        """The built-in engine answers in milliseconds: a job that runs longer than 0.9 x the lease is
        stuck, and is killed before its lease runs out. A model may take minutes: its generations
        renew the lease while they run, and the limit only bounds a hung one."""
        if self.task_time_limit_seconds > 0:
            return self.task_time_limit_seconds
        if self.engine == "builtin" and not self.engine_stream_delay_ms:
            return max(1.0, self.lease_seconds * 0.9)
        return 300.0  # a model, or the built-in engine streaming word by word: the lease is renewed

    def require_engine(self) -> None:
        """A ConfigError that says what is missing when the configured engine cannot run."""
        if self.engine == "builtin":
            return
        if self.engine != "openai":
            raise ConfigError(f"ENGINE must be 'builtin' or 'openai', not {self.engine!r}")
        if self.llm_servers:
            return
        missing = [name for name, value in (("LLM_BASE_URL", self.llm_base_url), ("LLM_MODEL", self.llm_model))
                   if not value]
        if missing:
            raise ConfigError(f"ENGINE=openai needs LLM_SERVERS, or {' and '.join(missing)}")

    def model_servers(self) -> list[ModelServer]:
        """The pool of model servers: LLM_SERVERS, or the one LLM_BASE_URL names (none: builtin)."""
        if self.llm_servers:
            return parse_servers(self.llm_servers)
        if self.llm_base_url and self.llm_model:
            return [ModelServer(url=self.llm_base_url, model=self.llm_model, slots=SINGLE_SERVER_SLOTS,
                                api_key=self.llm_api_key)]
        return []

    def require_auth_secret(self) -> str:
        """The HS256 secret ("" when only JWKS tokens are accepted), or a ConfigError that says why
        web may not start."""
        if self.auth_jwks_url and not self.auth_audience and not self.dev_mode:
            # Without an audience, a token the provider issued for any other application would do.
            raise ConfigError("AUTH_JWKS_URL needs AUTH_AUDIENCE: the audience (aud claim) tokens for chatq carry")
        if _strong(self.auth_secret):
            return self.auth_secret
        if self.dev_mode:
            return self.auth_secret_or_dev
        if not self.auth_secret:
            if self.auth_jwks_url:
                return ""
            raise ConfigError("AUTH_SECRET is not set; set it (or AUTH_JWKS_URL), or set CHATQ_DEV=1 for "
                              "local development")
        raise ConfigError("AUTH_SECRET is a well-known value, shorter than 32 characters or made of too few "
                          "different characters; choose a long random secret (openssl rand -hex 32)")

    def require_erasure_secret(self) -> str:
        """The key of the erasure records' user digests, or a ConfigError: an unkeyed (or publicly
        keyed) digest would let anyone with a copy of the database test whether a guessable user
        id, an email address, was erased."""
        for secret in (self.erasure_secret, self.auth_secret):
            if _strong(secret):
                return secret
        if self.dev_mode:
            return self.auth_secret_or_dev
        raise ConfigError("ERASURE_SECRET is not set and AUTH_SECRET is not a strong secret: erasure records "
                          "keep a digest of the user keyed with one of them; set ERASURE_SECRET (openssl rand -hex 32)")

    def require_flower_auth(self) -> str:
        """FLOWER_BASIC_AUTH ("user:password") when it is one Flower may serve with, "" in dev mode
        without it, or a ConfigError that says what to set."""
        user, colon, password = self.flower_basic_auth.partition(":")
        if colon and user.strip() and len(password.strip()) >= MIN_FLOWER_PASSWORD:
            return self.flower_basic_auth
        if self.flower_basic_auth:
            raise ConfigError(f"FLOWER_BASIC_AUTH must be user:password, with a user and a password of at least "
                              f"{MIN_FLOWER_PASSWORD} characters")
        if self.dev_mode:
            return ""
        raise ConfigError("Flower refuses to serve without FLOWER_BASIC_AUTH=user:password (or CHATQ_DEV=1)")


MIN_FLOWER_PASSWORD = 8


def parse_tier_weights(value: str) -> dict[str, float]:
    """ "free=1,pro=4" -> {"free": 1.0, "pro": 4.0}; each weight a number from 0.01 to 1000."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        tier, equals, weight = item.partition("=")
        try:
            number = float(weight)
        except ValueError:
            number = float("nan")
        if not equals or not tier.strip() or not 0.01 <= number <= 1000:
            raise ValueError(f"{item!r} is not tier=weight with a weight from 0.01 to 1000")
        weights[tier.strip()] = number
    return weights


def _strong(secret: str) -> bool:
    """Long, not a well-known value, and not made of a few characters repeated ("x" * 32, spaces).
    A hex secret has 16 different characters; 10 is far above any accident."""
    return (secret not in WELL_KNOWN_SECRETS and len(secret) >= 32 and len(set(secret)) >= 10
            and not secret.isspace())
