"""kombu's Redis transport as chatq uses it: sending through one Redis client per channel (web and
worker), and reading the worker's subscriptions with a deadline (worker).

kombu builds a new `redis.Redis` client for every command it sends outside its polling loop
(`Channel.conn_or_acquire`): every job published, and in the worker every delivery's bookkeeping,
every ack and every batch of task events. Building one copies redis-py's table of response
callbacks — on the web tier a part of every answer job sent worth keeping, in the worker's main
process a fifth of its CPU (docs/decisions/0007 has the figures).
The client only wraps the channel's connection pool, which does the actual sharing, so one client
per channel sends exactly the same commands over the same connections.

`Transport` is used by the apps that only send jobs (web's producer); `WorkerTransport` and
`WorkerSentinelTransport` by the worker's consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

# What Celery's `broker_transport` names for these transports.
TRANSPORT = "models.coordination.broker:Transport"
WORKER_TRANSPORT = "models.coordination.broker:WorkerTransport"
WORKER_SENTINEL_TRANSPORT = "models.coordination.broker:WorkerSentinelTransport"

# How long the worker's event loop may wait for the rest of a subscription message it saw arrive.
SUBSCRIPTION_READ_SECONDS = 1.0


class _OneClient:
    """The channel's commands go through one client on its connection pool, built again only when
    kombu replaced the pool (after a fork, or a connection that failed as the channel opened)."""

    _create_client: Callable[[], redis.Redis]
    pool: redis.ConnectionPool
    _sending_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client is None:
            if self._sending_client is None or self._sending_client.connection_pool is not self.pool:
                self._sending_client = self._create_client()
            client = self._sending_client
        yield client


class Channel(_OneClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class BoundedPubSub(redis.client.PubSub):
    """A subscription whose reads end. The worker's event loop reads its subscription (Celery's
    remote control, which Flower uses) only when the poller saw the socket readable, but redis-py
    reads a blocking pub/sub reply with no timeout at all, reconnecting first if the connection was
    dropped. Opened during a partition (accepted by a load balancer or NAT, never answered), that
    connection stays silent after the heal, and the read held the worker's whole event loop for
    good: no job, no heartbeat, no ack (tests/faults: the partition scenario). Read as a poll with a
    deadline instead: nothing there is "no message", a reply that stops half-way is a timeout, which
    kombu handles as a lost connection; its health check replaces a subscription that stays silent."""

    def parse_response(self, block: bool = True, timeout: float = 0) -> object:
        if block:
            return super().parse_response(block=False, timeout=SUBSCRIPTION_READ_SECONDS)
        return super().parse_response(block=False, timeout=timeout)


class _BoundedSubscriptions:
    """The channel's subscription (kombu's `subclient`) as a BoundedPubSub on the same pool."""

    async_pool: redis.ConnectionPool

    @cached_property
    def subclient(self) -> redis.client.PubSub:
        return BoundedPubSub(self.async_pool)


class DoneEitherWayQoS(kombu_redis.QoS):
    """A job acknowledged is done in this process even when Redis did not hear the ack. kombu
    forgets a delivery only after Redis confirmed it: an ack that timed out on a dead connection
    left the delivery counted, and with one job prefetched per slot the channel never asked for
    another — the worker sat idle on a healthy connection after the heal (the partition scenario).
    Redis still holds the delivery among the unacked, and restores it after the visibility timeout:
    the job runs once more, which chatq's claims make harmless (an answer job claims what is ready)."""

    def ack(self, delivery_tag: str) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            else:
                self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)


class WorkerChannel(_BoundedSubscriptions, _OneClient, kombu_redis.Channel):
    QoS = DoneEitherWayQoS


class WorkerSentinelChannel(_BoundedSubscriptions, _OneClient, kombu_redis.SentinelChannel):
    QoS = DoneEitherWayQoS


class WorkerTransport(kombu_redis.Transport):
    Channel = WorkerChannel


class WorkerSentinelTransport(kombu_redis.SentinelTransport):
    Channel = WorkerSentinelChannel
