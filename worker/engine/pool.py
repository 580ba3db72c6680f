"""Taking a slot on one of the pool's model servers, and what a request's outcome tells the others.

A worker takes a slot before it sends a request and gives it back after, so that no server ever
runs more requests than its `slots`, across every worker on every node (otherwise the extra ones
queue inside the model server, where fair share, metrics and cancel cannot see them). A slot is a
member of the server's sorted set in Redis, scored by when its lease runs out: the worker renews
it every third of LLM_SLOT_TTL_SECONDS while the request runs, so a dead worker's slot is free
again within that. Redis's own clock scores them (TIME, inside the scripts): workers' clocks may
disagree.

A worker reserves a slot before it claims a message (`reserve`): while every slot is busy the
messages stay queued — no conversation leased, cancellable at once — and the worker that gets the
next free slot claims by fair share, so the scheduler, not the race for the slot, decides which
message it goes to.

Which server: the one that answered the conversation's last turn, while it is ready and has a
free slot within LLM_AFFINITY_WAIT_SECONDS (its prompt cache holds the conversation: the next
turn's prefill is skipped; a slot reserved elsewhere is given back); otherwise the least busy ready
server of the primary group; the fallback group only when no primary server can answer. A
failure (no connection, a 5xx, a timeout) puts the server in a cooldown every worker sees, doubled
with each failure in a row; when it is over, one request (holding the probe key) tries the
server, and its success makes it ready.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import redis
import structlog
from redis.exceptions import RedisError

from models.coordination.model_pool import (
    AFFINITY_TTL_SECONDS,
    ModelServer,
    ServerState,
    affinity_key,
    health_key,
    probe_key,
    server_states,
    slot_uses_key,
    slots_key,
)

from .. import metrics
from .base import Cancellation, TransientEngineError

log = structlog.get_logger(__name__)
POLL_SECONDS = 0.05  # how often a request waiting for a slot looks again

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
# KEYS: the server's slots, its slots' last uses. ARGV: its slots, the lease (ms), the token, the
# slot wanted (-1: any). A held slot is the member "<index>:<token>". Returns the index taken, or -1
# (no slot free, or not the one wanted). "Any" is the free slot used longest ago: on a server whose
# slots keep prompt caches (llama.cpp's), that is the cache least likely to be wanted back.
_TAKE = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local slots = tonumber(ARGV[1])
local held = redis.call('ZRANGE', KEYS[1], 0, -1)
if #held >= slots then return -1 end
local taken = {}
for _, member in ipairs(held) do
  local index = tonumber(string.match(member, '^(%d+):'))
  if index then taken[index] = true end
end
local index = tonumber(ARGV[4])
if index >= 0 then
  if taken[index] or index >= slots then return -1 end
else
  local oldest = nil
  for candidate = 0, slots - 1 do
    if not taken[candidate] then
      local used = tonumber(redis.call('HGET', KEYS[2], candidate) or '0')
      if oldest == nil or used < oldest then index, oldest = candidate, used end
    end
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), index .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], index, now)
redis.call('PEXPIRE', KEYS[2], 3600000)
return index
"""
# KEYS: the server's slots. ARGV: the lease (ms), the token. 0: the slot had run out and was taken.
_RENEW = _NOW_MS + """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""
# KEYS: the server's health. ARGV: the first cooldown (s), the cap (s). Returns the cooldown.
_FAILED = """
local t = redis.call('TIME')
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local pause = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) * 2 ^ (failures - 1))
redis.call('HSET', KEYS[1], 'until', tostring(t[1] + t[2] / 1e6 + pause))
redis.call('EXPIRE', KEYS[1], math.ceil(4 * tonumber(ARGV[2])))
return tostring(pause)
"""


@dataclass(frozen=True)
class PoolSettings:
    slot_ttl_seconds: float = 10.0
    affinity_wait_seconds: float = 2.0
    slot_wait_seconds: float = 30.0
    cooldown_seconds: float = 2.0
    cooldown_cap_seconds: float = 60.0
    probe_seconds: float = 60.0  # how long a probe may hold a server (the request's timeout)


class NoServer(TransientEngineError):
    """No server of the pool could take the request in time: the message goes back to the queue."""


class Place(NamedTuple):
    """Where a conversation's last turn was answered: the server, and which of its slots."""

    server: ModelServer
    index: int | None


class Slot:
    """Slot `index` of `server`, held until released; renewed in the background while held."""

    def __init__(self, pool: Pool, server: ModelServer, index: int, token: str, probe: bool) -> None:
        self.pool, self.server, self.index, self.probe = pool, server, index, probe
        self.token = f"{index}:{token}"  # its member of the server's sorted set
        self._released = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"slot-{server.key}", daemon=True)
        self._renewer.start()
        metrics.LLM_SLOTS_IN_USE.labels(server.key).inc()

    def _renew(self) -> None:
        lease_ms = int(self.pool.settings.slot_ttl_seconds * 1000)
        while not self._released.wait(self.pool.settings.slot_ttl_seconds / 3):
            try:
                if not self.pool.scripts.renew(keys=[slots_key(self.server)], args=[lease_ms, self.token]):
                    log.warning("llm_slot_lost", server=self.server.shown_url)  # Redis restarted, or stalled
                    return
            except RedisError as error:
                log.warning("llm_slot_renew_failed", server=self.server.shown_url, error=str(error))

    @property
    def held(self) -> bool:
        return not self._released.is_set()

    def release(self) -> None:
        if self._released.is_set():
            return
        self._released.set()
        metrics.LLM_SLOTS_IN_USE.labels(self.server.key).dec()
        try:
            with self.pool.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(slots_key(self.server), self.token)
                if self.probe:
                    pipe.delete(probe_key(self.server))
                pipe.execute()
        except RedisError as error:  # the lease runs out by itself
            log.warning("llm_slot_release_failed", server=self.server.shown_url, error=str(error))


def _wanted(place: Place | None) -> int:
    """The slot a conversation goes back to: its last one on a server that pins slots, else any."""
    return place.index if place is not None and place.server.pin_slots and place.index is not None else -1


class _Scripts:
    def __init__(self, client: redis.Redis) -> None:
        self.take = client.register_script(_TAKE)
        self.renew = client.register_script(_RENEW)
        self.failed = client.register_script(_FAILED)


class Pool:
    def __init__(self, servers: list[ModelServer], client: redis.Redis, settings: PoolSettings) -> None:
        self.servers = servers
        self.redis = client
        self.settings = settings
        self.scripts = _Scripts(client)

    def preferred(self, conversation_id: uuid.UUID | str) -> Place | None:
        """Where the conversation's last turn was answered, if the pool still has that server."""
        try:
            remembered = self.redis.get(affinity_key(conversation_id))
        except RedisError:
            return None
        if remembered is None:
            return None
        key, _, index = remembered.decode().partition(":")
        server = next((server for server in self.servers if server.key == key), None)
        return Place(server, int(index) if index.isdigit() else None) if server is not None else None

    def reserve(self, stopping: Callable[[], bool]) -> Slot | None:
        """A slot on the least busy ready server, taken before a message is claimed, waiting up to
        LLM_SLOT_WAIT_SECONDS for one to be free. None when no server is ready (each cooling down):
        the message is claimed all the same and its request meets the cooldown, so a pool that is
        down fails its messages readably instead of holding them queued. NoServer when the wait ran
        out or this worker began stopping (`stopping()`): the message was never claimed."""
        started = time.monotonic()
        deadline = started + self.settings.slot_wait_seconds
        while True:
            candidates, _soonest = self._candidates(self._states(), frozenset())
            if not candidates:
                return None
            for state in candidates:
                slot = self._try(state)
                if slot is not None:
                    metrics.LLM_SLOT_WAIT.labels(state.server.key).observe(time.monotonic() - started)
                    return slot
            if time.monotonic() >= deadline:
                raise NoServer(f"every model server's slots stayed busy for {self.settings.slot_wait_seconds:g} s")
            if stopping():
                raise NoServer("this worker is stopping")
            time.sleep(POLL_SECONDS)

    @contextmanager
    def slot(self, conversation_id: uuid.UUID | str, cancellation: Cancellation,
             avoid: frozenset[str] = frozenset(), reserved: Slot | None = None) -> Iterator[Slot | None]:
        """A slot on the best server for the conversation (None: cancelled while waiting), given
        back when the block ends. `avoid`: servers this request already failed on, used only when
        nothing else can answer. `reserved`: the slot `reserve` took, used unless the conversation's
        last server has one within the affinity wait. NoServer when none had a free slot within
        LLM_SLOT_WAIT_SECONDS."""
        if reserved is not None and reserved.held and reserved.server.key not in avoid:
            taken = self._keep_or_move(conversation_id, cancellation, reserved)
        else:
            taken = self._take(conversation_id, cancellation, avoid)
        try:
            yield taken
        finally:
            if taken is not None:
                taken.release()

    def _keep_or_move(self, conversation_id: uuid.UUID | str, cancellation: Cancellation,
                      reserved: Slot) -> Slot | None:
        """The reserved slot, or the conversation's own (its last server's; that very slot where
        the server pins slots): taken at once if free, and then the reserved one is given back.
        If it is busy, the reserved slot is given back before waiting for it (up to
        LLM_AFFINITY_WAIT_SECONDS, then any): a worker holding one server's slot while it waits for
        another's would hold up the worker waiting the other way round."""
        place = self.preferred(conversation_id)
        if place is None or (place.server == reserved.server and _wanted(place) in (-1, reserved.index)):
            return reserved
        (state,) = self._states([place.server])
        if state.cooling_for > 0:
            return reserved  # its own server cannot answer now: nothing to wait for
        slot = self._try(state, _wanted(place))
        reserved.release()
        return slot if slot is not None else self._take(conversation_id, cancellation, frozenset())

    def _states(self, servers: list[ModelServer] | None = None) -> list[ServerState]:
        try:
            return server_states(self.redis, servers or self.servers)
        except RedisError as error:
            raise NoServer(f"the model servers' slots cannot be read: {error}") from error

    def _take(self, conversation_id: uuid.UUID | str, cancellation: Cancellation, avoid: frozenset[str]) -> Slot | None:
        started = time.monotonic()
        deadline = started + self.settings.slot_wait_seconds
        place = self.preferred(conversation_id)
        faithful_until = started + self.settings.affinity_wait_seconds
        while True:
            states = self._states()
            candidates, soonest = self._candidates(states, avoid)
            mine = [state for state in candidates if place is not None and state.server == place.server]
            faithful = bool(mine) and time.monotonic() < faithful_until
            if mine:  # its last server first; only it (its slot) while the conversation may wait for it
                candidates = mine + ([] if faithful else [s for s in candidates if s.server != mine[0].server])
            for state in candidates:
                slot = self._try(state, _wanted(place) if faithful and place is not None else -1)
                if slot is not None:
                    waited = time.monotonic() - started
                    metrics.LLM_SLOT_WAIT.labels(state.server.key).observe(waited)
                    return slot
            if not candidates and soonest is not None and soonest > self.settings.cooldown_seconds:
                # Every server is down (each failed more than once in a row): this attempt ends now,
                # and the message waits in the queue, saying why, for its next attempt, which
                # probes a server whose cooldown is over. Waiting here held it `processing` for
                # the whole slot wait, attempt after attempt, with nothing being generated.
                down = ", ".join(f"{s.server.shown_url} ({s.failures} failures in a row)" for s in states)
                raise NoServer(f"every model server is down, waiting for one to answer again: {down}")
            now = time.monotonic()
            if now >= deadline:
                busy = ", ".join(f"{s.server.shown_url} {s.state}" for s in states)
                raise NoServer(f"no model server had a free slot within {self.settings.slot_wait_seconds:g} s "
                               f"({busy})")
            pause = POLL_SECONDS if candidates or soonest is None else min(max(soonest, POLL_SECONDS), deadline - now)
            if cancellation.wait(pause):
                return None

    def _candidates(self, states: list[ServerState],
                    avoid: frozenset[str]) -> tuple[list[ServerState], float | None]:
        """The servers to try, best first, and (when none can be tried) the soonest end of a
        cooldown. Primary before fallback, servers in `avoid` only when nothing else is ready;
        within a group the least busy first."""
        ready = [state for state in states if state.cooling_for == 0]
        for allowed in (lambda s: s.server.key not in avoid, lambda s: True):
            for group in ("primary", "fallback"):
                chosen = [s for s in ready if s.server.group == group and allowed(s)]
                if chosen:  # the least busy first; among equals, any (new conversations spread out)
                    return sorted(random.sample(chosen, len(chosen)), key=lambda s: s.in_use / s.server.slots), None
        cooling = [state.cooling_for for state in states]
        return [], min(cooling) if cooling else None

    def _try(self, state: ServerState, index: int = -1) -> Slot | None:
        """Slot `index` of the server (-1: any free one), or None."""
        server = state.server
        probe = state.failures > 0  # its cooldown is over: one request tries it, the others wait
        try:
            if probe and not self.redis.set(probe_key(server), "1", nx=True,
                                            ex=max(1, int(self.settings.probe_seconds))):
                return None
            token = uuid.uuid4().hex
            taken = self.scripts.take(keys=[slots_key(server), slot_uses_key(server)],
                                      args=[server.slots, int(self.settings.slot_ttl_seconds * 1000), token, index])
            if taken >= 0:
                return Slot(self, server, taken, token, probe)
            if probe:
                self.redis.delete(probe_key(server))
        except RedisError as error:
            raise NoServer(f"the model servers' slots cannot be taken: {error}") from error
        return None

    # What a request's outcome tells every worker ----------------------------------------------

    def answered(self, slot: Slot, conversation_id: uuid.UUID | str) -> None:
        """The server answered: it is ready (a probe's success ends its cooldown), and the
        conversation's next turn goes back to it, to the same slot where the server pins them."""
        server = slot.server
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(health_key(server))
                pipe.set(affinity_key(conversation_id), f"{server.key}:{slot.index}", ex=AFFINITY_TTL_SECONDS)
                pipe.execute()
        except RedisError as error:
            log.warning("llm_pool_update_failed", server=server.shown_url, error=str(error))

    def failed(self, server: ModelServer, kind: str) -> None:
        """The server failed (`kind`: connection, timeout, 5xx): it cools down, for every worker."""
        metrics.LLM_FAILURES.labels(server.key, kind).inc()
        try:
            pause = float(self.scripts.failed(keys=[health_key(server)], args=[
                self.settings.cooldown_seconds, self.settings.cooldown_cap_seconds]))
        except RedisError as error:
            log.warning("llm_pool_update_failed", server=server.shown_url, error=str(error))
            return
        metrics.LLM_COOLDOWNS.labels(server.key).inc()
        log.warning("llm_server_cooling_down", server=server.shown_url, model=server.model, kind=kind,
                    seconds=round(pause, 1))
