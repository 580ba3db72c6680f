"""Delivery guarantees under faults (docs/api.md, "What chatq guarantees", 2-4): every accepted message is
answered exactly once, in order, whatever dies. Each scenario prints a line of figures."""

from __future__ import annotations

import itertools
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import redis
import requests

from scripts.devstack import create_database, libpq_url
from tests.faults.audit import audit, reply_latency, wait_terminal
from tests.faults.conftest import FaultStack, Killer
from tests.faults.proxy import SilentProxy
from tests.faults.sentinel import MASTER_NAME, SentinelRedis
from tests.faults.standby import Standby
from tests.support import Api, BackgroundPoll, Worker, subscribers, wait_until
from worker.celery_app import HEARTBEAT_SECONDS

pytestmark = pytest.mark.faults


def _post_recorded(api: Api, conversation_id: str, text: str, statuses: list[int], accepted: list[str],
                   **kwargs) -> requests.Response | None:
    """Post once as a load thread does: its status in `statuses` (0: no answer), its message id in
    `accepted` when it was accepted; the response, if there was one."""
    try:
        response = api.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": text},
                            timeout=15, **kwargs)
    except requests.RequestException:
        statuses.append(0)
        return None
    statuses.append(response.status_code)
    if response.status_code == 202:
        accepted.append(response.json()["message"]["id"])
    return response


def _post(api: Api, conversation_id: str, text: str) -> str | None:
    """Post once; the message id if it was accepted (202), None otherwise."""
    try:
        response = api.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": text}, timeout=10)
    except requests.RequestException:
        return None
    return response.json()["message"]["id"] if response.status_code == 202 else None


def test_workers_sigkilled_every_second(fault_stack: FaultStack) -> None:
    """1. Three workers answer 200 messages in 20 conversations while a random worker is
    SIGKILLed every second and restarted."""
    stack = fault_stack.start(workers=3)
    users = [Api(stack.webs[0].url) for _ in range(20)]
    firsts = [user.chat(f"Add task: first of {n}") for n, user in enumerate(users)]
    conversations = [first["conversation_id"] for first in firsts]
    accepted = [first["message"]["id"] for first in firsts]
    killer = Killer(stack, period=1.0)
    killer.start()
    try:
        jobs = [(users[n], conversations[n], f"Add task: item {k} of {n}") for k in range(1, 10) for n in range(20)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            accepted += [mid for mid in pool.map(lambda job: _post(*job), jobs) if mid]
        wait_terminal(stack.connect, accepted, timeout=150)
    finally:
        killer.stop()
    with stack.connect() as connection:
        figures = audit(connection, "sigkill-workers", sent=200, ids=accepted)
        figures.extra = f"kills={killer.kills} {reply_latency(connection, accepted)}"
    figures.report().assert_clean()
    assert figures.accepted == 200 and killer.kills >= 3


def test_redis_restarts_empty_with_jobs_queued(fault_stack: FaultStack) -> None:
    """2. Redis is killed with jobs queued and comes back empty; every message is still answered."""
    stack = fault_stack.start(workers=0)  # no worker yet: the jobs wait in Redis
    user = Api(stack.webs[0].url)
    accepted, conversation_id = [], None
    for n in range(30):
        answer = user.chat(f"Add task: queued {n}", conversation_id if n % 3 else None)
        conversation_id = answer["conversation_id"]
        accepted.append(answer["message"]["id"])
    stack.kill_redis()
    stack.start_redis()
    stack.workers = [stack.new_worker(i) for i in range(2)]
    wait_terminal(stack.connect, accepted, timeout=90)
    with stack.connect() as connection:
        figures = audit(connection, "redis-restarted-empty", sent=30, ids=accepted)
        figures.extra = reply_latency(connection, accepted)
        figures.report().assert_clean()


def test_postgres_down_for_five_seconds_under_load(fault_stack: FaultStack) -> None:
    """3. Postgres stops for 5 s under load: POSTs meanwhile get 503 with Retry-After, every accepted
    message is answered afterwards, and no web or worker process was restarted. Then, with every
    pool holding connections to the server that went away: the first reads after it is back all
    answer 200 (a read that meets a dead pooled connection runs again on a fresh one)."""
    stack = fault_stack.start(workers=2)
    users = [Api(stack.webs[0].url) for _ in range(5)]
    conversations = [user.chat("hello")["conversation_id"] for user in users]
    accepted: list[str] = []
    statuses: list[int] = []
    no_retry_after: list[str] = []  # asserted after the threads end: an assert in a thread only ends it
    stop = threading.Event()

    def load(index: int) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            response = _post_recorded(users[index], conversations[index], f"Add task: load {index}-{n}",
                                      statuses, accepted)
            if response is not None and response.status_code == 503 and not int(
                    response.headers.get("Retry-After", "0")) > 0:
                no_retry_after.append(response.text)
            time.sleep(0.05)

    pids = [p.popen.pid for p in [*stack.webs, *stack.workers]]
    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(users))]
    for thread in threads:
        thread.start()
    time.sleep(2)
    stack.stop_postgres()
    time.sleep(5)
    stack.start_postgres()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    wait_terminal(stack.connect, accepted, timeout=90)
    with stack.connect() as connection:
        figures = audit(connection, "postgres-down-5s", sent=len(statuses), ids=accepted)
    unavailable = statuses.count(503)
    figures.extra = f"http_503={unavailable} other={len(statuses) - unavailable - len(accepted)}"
    figures.report().assert_clean()
    assert unavailable > 0, "no POST met the outage"
    assert set(statuses) <= {202, 503}, statuses
    assert no_retry_after == []
    assert all(p.popen.poll() is None for p in [*stack.webs, *stack.workers])
    assert [p.popen.pid for p in [*stack.webs, *stack.workers]] == pids

    # Every pool (plain reads, waiting reads) holds connections; the server goes away and comes back
    # while nobody asks; the first reads after it are all answered.
    def reads() -> list[int]:
        return [response.status_code for user, conversation in zip(users, conversations, strict=True)
                for response in (user.get("/api/v1/conversations"),
                                 user.get(f"/api/v1/conversations/{conversation}/messages", params={"wait": 1}),
                                 user.get(f"/api/v1/conversations/{conversation}"),
                                 user.get("/api/v1/tasks"))]

    assert set(reads() + reads()) == {200}
    stack.stop_postgres()
    stack.start_postgres()
    after = reads() + reads()
    assert after == [200] * len(after), after


def test_concurrent_retries_of_one_idempotency_key(fault_stack: FaultStack) -> None:
    """4. Twenty concurrent retries of one Idempotency-Key: one message, one reply."""
    stack = fault_stack.start(workers=2, beat=False)
    user = Api(stack.webs[0].url)
    conversation_id = user.chat("hello")["conversation_id"]
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    path = f"/api/v1/conversations/{conversation_id}/messages"
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: user.post(path, json={"content": "Add task: just once"}, headers=key),
                                  range(20)))
    ids = sorted({r.json()["message"]["id"] for r in responses if r.status_code == 202})
    wait_terminal(stack.connect, ids)
    with stack.connect() as connection:
        figures = audit(connection, "idempotency-burst", sent=20, ids=ids)
        messages = connection.execute(
            "SELECT count(*) FROM messages WHERE conversation_id = %s AND content = 'Add task: just once'",
            (conversation_id,)).fetchone()[0]
    figures.extra = f"responses_202={sum(r.status_code == 202 for r in responses)} messages={messages}"
    figures.report().assert_clean()
    assert len(ids) == 1 and messages == 1
    assert [t["title"] for t in user.tasks()] == ["just once"]


def test_back_to_back_messages_with_three_workers_are_answered_in_order(fault_stack: FaultStack) -> None:
    """5. Five messages posted back to back into one conversation, three workers: five replies in
    seq order, each generated after the one before (the 5th reply's history holds the 4th)."""
    stack = fault_stack.start(workers=3, beat=False)
    user = Api(stack.webs[0].url)
    first = user.chat("Add task: one")
    conversation_id = first["conversation_id"]
    ids = [first["message"]["id"]] + [
        _post(user, conversation_id, text) for text in ("Add task: two", "Add task: three", "Add task: four",
                                                       "what did I just add?")
    ]
    wait_terminal(stack.connect, ids)
    with stack.connect() as connection:
        figures = audit(connection, "back-to-back", sent=5, ids=ids)
        replies = connection.execute(
            "SELECT r.seq, r.context_seq FROM messages q JOIN messages r ON r.reply_to_id = q.id "
            "WHERE q.id = ANY(%s::uuid[]) ORDER BY q.seq", (ids,)).fetchall()
    figures.report().assert_clean()
    assert [seq for seq, _ in replies] == sorted(seq for seq, _ in replies)
    assert replies[4][1] >= replies[3][0], "the 5th reply was generated without the 4th in its history"
    assert "four" in user.wait_answered(ids[4])["reply"]["content"]


def test_web_node_sigkilled_right_after_answering_202(fault_stack: FaultStack) -> None:
    """6. A web node is SIGKILLed right after answering 202: the message is answered anyway."""
    stack = fault_stack.start(webs=2, workers=1)
    doomed, survivor = stack.webs
    user = Api(doomed.url)
    accepted = []
    for n in range(5):
        accepted.append(user.chat(f"Add task: before the crash {n}")["message"]["id"])
    doomed.kill(signal.SIGKILL)
    survivor_user = Api(survivor.url, user.user)
    answered = [survivor_user.wait_answered(mid) for mid in accepted]
    with stack.connect() as connection:
        audit(connection, "web-sigkilled-after-202", sent=5, ids=accepted).report().assert_clean()
    assert all(message["status"] == "answered" for message in answered)


def test_a_message_that_cannot_be_answered_fails_readably_and_can_be_retried(fault_stack: FaultStack) -> None:
    """Never stuck: generations that always outlive the time limit end in `failed` with an error a
    person can read after MAX_ATTEMPTS; the retry endpoint puts the message back, and a healthy
    worker answers it."""
    fault_stack.env.update(ENGINE_DELAY_MS="5000", LEASE_SECONDS="2", MAX_ATTEMPTS="2")
    stack = fault_stack.start(workers=1)
    user = Api(stack.webs[0].url)
    accepted = user.chat("Add task: slow")
    message_id = accepted["message"]["id"]
    wait_terminal(stack.connect, [message_id], timeout=60)
    failed = user.get(f"/api/v1/messages/{message_id}").json()
    assert failed["status"] == "failed" and "2 attempts" in failed["error"] and failed["reply"] is None

    requeued = user.post(f"/api/v1/messages/{message_id}/retry")
    assert requeued.status_code == 202 and requeued.json()["message"]["status"] == "queued"
    assert user.post(f"/api/v1/messages/{message_id}/retry").status_code == 409  # no longer failed
    assert Api(stack.webs[0].url).post(f"/api/v1/messages/{message_id}/retry").status_code == 404

    stack.workers[0].kill()
    fault_stack.env.update(ENGINE_DELAY_MS="0", LEASE_SECONDS="10", MAX_ATTEMPTS="5")
    stack.workers = [stack.new_worker(0)]
    answered = user.wait_answered(message_id)
    assert answered["status"] == "answered" and answered["error"] is None
    assert "slow" in answered["reply"]["content"]
    assert [task["title"] for task in user.tasks()] == ["slow"]


def test_long_polls_are_woken_by_notifications_again_after_redis_restarts(fault_stack: FaultStack) -> None:
    """7. The web process's pub/sub connection dies with Redis; the next wait opens a new one, so
    waits are woken by their answers again rather than by their re-checks (here longer than the
    wait itself)."""
    fault_stack.env["RECHECK_SECONDS"] = "60"
    stack = fault_stack.start(workers=1, beat=False)
    user = Api(stack.webs[0].url)
    broker = redis.Redis.from_url(stack.env["REDIS_URL"])
    conversation_id, _ = user.ask("Add task: before the restart")  # the listener is running
    stack.kill_redis()
    stack.start_redis()
    for worker in stack.workers:
        worker.kill()
    message_id = user.chat("Add task: after the restart", conversation_id)["message"]["id"]
    poll = BackgroundPoll(user, message_id)
    poll.start()
    wait_until(lambda: subscribers(broker, f"chatq:message:{message_id}") == 1,
               what="the waiting process to subscribe on the restarted Redis")
    stack.workers = [stack.new_worker(0)]
    poll.join(timeout=40)
    assert poll.answer["status"] == "answered" and poll.seconds < 30


PARTITION_SECONDS = 20
SHARE_SECONDS = 12


class SteadyLoad(threading.Thread):
    """Users each posting a message every `period` seconds until stopped, each message's id kept
    with when it was accepted (time.monotonic())."""

    def __init__(self, conversations: list[tuple[Api, str]], period: float) -> None:
        super().__init__(daemon=True)
        self.conversations, self.period = conversations, period
        self.accepted: list[tuple[float, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        for round_ in itertools.count():
            for user, conversation_id in self.conversations:
                message_id = _post(user, conversation_id, f"add task {round_}")
                if message_id:
                    self.accepted.append((time.monotonic(), message_id))
            if self.stopped.wait(self.period):
                return

    def since(self, moment: float) -> list[str]:
        return [message_id for accepted_at, message_id in self.accepted if accepted_at >= moment]

    def stop(self) -> list[str]:
        self.stopped.set()
        self.join()
        return [message_id for _, message_id in self.accepted]


def _age(path: Path) -> float:
    return time.time() - path.stat().st_mtime


def test_a_worker_cut_off_mid_job_by_a_partition_works_again_after_it(fault_stack: FaultStack) -> None:
    """One of three workers reaches Redis through a proxy. While that worker is in the middle of a
    job, the proxy goes silent for 20 s: it forwards nothing on any connection and closes none, and
    connections opened meanwhile are accepted and never answered (a partition; a TCP load balancer
    in front of an unreachable Redis). The other two answer everything; after the heal the cut-off
    worker is still running and takes its share again, and its liveness file went stale while it
    could not work and is fresh again after."""
    stack = fault_stack.start(workers=2)
    proxy = SilentProxy(stack.redis_port)
    alive_file = stack.pgdata.parent / "cut-off-alive"
    try:
        cut_off = Worker("fault-worker-partitioned", {**stack.env, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
                                                      "WORKER_HEARTBEAT_FILE": str(alive_file)},
                         concurrency=1).start()
        stack.workers.append(cut_off)  # stopped with the stack
        users = [Api(stack.webs[0].url) for _ in range(6)]
        load = SteadyLoad([(user, user.chat("hello")["conversation_id"]) for user in users], period=0.5)
        load.start()
        # Cut it off the moment it starts a job (each takes >= 150 ms here).
        received = cut_off.log_text().count("received")
        wait_until(lambda: cut_off.log_text().count("received") > received + 2, timeout=30, interval=0.01,
                   what="the worker to take jobs")
        received = cut_off.log_text().count("received")
        wait_until(lambda: cut_off.log_text().count("received") > received, timeout=30, interval=0.005,
                   what="the worker to start a job")
        proxy.silence()
        silenced_at = time.monotonic()
        ages = []
        while time.monotonic() - silenced_at < PARTITION_SECONDS:
            time.sleep(1)
            ages.append(_age(alive_file))
        proxy.heal()
        healed_at = time.monotonic()
        received = cut_off.log_text().count("received")
        wait_until(lambda: cut_off.log_text().count("received") > received, timeout=40, interval=0.1,
                   what="the cut-off worker to take a job after the heal")
        back_after = time.monotonic() - healed_at
        back_at = time.monotonic()
        time.sleep(SHARE_SECONDS)
        ids = load.stop()
        wait_terminal(stack.connect, ids, timeout=60)
        with stack.connect() as connection:
            figures = audit(connection, "redis-partition", sent=len(ids), ids=ids)
        figures.report().assert_clean()
        assert cut_off.popen is not None and cut_off.popen.poll() is None, cut_off.log_text()[-5000:]
        after = load.since(back_at)
        log = cut_off.log_text()
        took = [message_id for message_id in after if message_id in log]
        print(f"partition: the cut-off worker took a job {back_after:.1f} s after the heal, then answered "
              f"{len(took)} of the {len(after)} posted in the next {SHARE_SECONDS} s; its liveness file's age "
              f"during the partition {[round(age) for age in ages]} s, after {_age(alive_file):.0f} s")
        # One of three workers: a share, not all (the other two were never away).
        assert len(took) >= len(after) // 6, "the cut-off worker did not take its share after the heal"
        # The worker's heartbeat stopped while it could not reach its broker (a liveness probe reading
        # the file's age sees it), and beats again now that it can.
        assert max(ages) > HEARTBEAT_SECONDS * 1.5
        assert _age(alive_file) < HEARTBEAT_SECONDS + 2
    finally:
        proxy.close()


def test_a_worker_killed_mid_erasure_is_replaced_and_the_erasure_finishes(fault_stack: FaultStack) -> None:
    """DELETE /me on a user with a long history; the worker carrying the erasure out is SIGKILLed (the
    whole process group, as a lost node) while it deletes the user's questions. Another worker finishes it, once the
    dead one's lease on it has run out: every row of the user goes, the erasure says erased."""
    fault_stack.env["FORGET_INTERVAL_SECONDS"] = "1"
    stack = fault_stack.start(workers=1)
    user = Api(stack.webs[0].url)
    conversation_id, _ = user.ask("add task: a long history")
    with stack.connect() as connection:  # 60,000 messages more: the erasure takes 60 batches of them
        connection.execute(
            "INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts) "
            "SELECT gen_random_uuid(), %s, %s, 10 + n, 'user', 'add task: ' || n, 'answered', 1 "
            "FROM generate_series(1, 60000) AS n", (conversation_id, user.user))
        connection.execute("UPDATE conversations SET last_seq = 60010 WHERE id = %s", (conversation_id,))
        erasure = user.request("DELETE", "/api/v1/me")
        assert erasure.status_code == 202, erasure.text
        erasure_id = erasure.json()["id"]

        def under_way() -> bool:  # the user's questions are being deleted, batch by batch
            return connection.execute("SELECT erased ? 'questions' FROM erasures WHERE id = %s",
                                      (erasure_id,)).fetchone()[0]

        wait_until(under_way, timeout=30, interval=0.01, what="the erasure to be under way")
        stack.workers[0].kill(signal.SIGKILL)
        left = connection.execute("SELECT count(*) FROM messages WHERE user_id = %s", (user.user,)).fetchone()[0]
        assert left > 0, "the erasure had finished before its worker was killed: nothing was tested"
        killed_at = time.monotonic()
        stack.workers[0] = stack.new_worker(0)

        def erased() -> bool:
            return user.get(f"/api/v1/erasures/{erasure_id}").json()["status"] == "erased"

        wait_until(erased, timeout=30, interval=0.2, what="the erasure to finish on the other worker")
        print(f"erasure: its worker killed with {left} messages left; finished {time.monotonic() - killed_at:.1f} s "
              "later by the replacement")
        assert connection.execute("SELECT count(*) FROM messages WHERE user_id = %s", (user.user,)).fetchone()[0] == 0
        assert connection.execute("SELECT count(*) FROM conversations WHERE user_id = %s",
                                  (user.user,)).fetchone()[0] == 0
        assert stack.workers[0].log_text().count("user_erased") == 1


MESSAGES_EACH = 10  # per conversation, 1.5 s apart: ~15 s of load, through the failover 3 s in


def _under_load_while(stack: FaultStack, fail_over, send) -> None:
    """200 messages into 20 conversations (10 users, 2 each; each conversation's 10 posted 1.5 s
    apart: ~13 a second, which three workers answer with room), `fail_over()` 3 s in."""
    users = [Api(stack.webs[0].url) for _ in range(10)]
    conversations = [(user, user.chat("hello")["conversation_id"]) for user in users for _ in range(2)]

    def load(user: Api, conversation_id: str) -> None:
        for n in range(MESSAGES_EACH):
            send(user, conversation_id, n)
            time.sleep(1.5)

    threads = [threading.Thread(target=load, args=pair) for pair in conversations]
    for thread in threads:
        thread.start()
    time.sleep(3)
    fail_over()
    for thread in threads:
        thread.join()


def _reply_waits(connection: psycopg.Connection, ids: list[str]) -> list[float]:
    """How long each question waited for its reply, shortest first."""
    return sorted(row[0] for row in connection.execute(
        "SELECT extract(epoch FROM r.created_at - q.created_at)::float8 FROM messages q JOIN messages r "
        "ON r.reply_to_id = q.id WHERE q.id = ANY(%s::uuid[])", (ids,)))


def test_the_redis_master_killed_under_load_and_sentinel_promoting_its_replica(fault_stack: FaultStack) -> None:
    """Redis under Sentinel (a master, a replica, three sentinels): the master is SIGKILLed while
    200 messages are posted into 20 conversations (150-ms replies, three workers). Every process
    follows the sentinels to the promoted replica by itself; what Redis lost (jobs, pieces)
    Postgres still has: every message is answered once, in order, no request answers 500, and
    replies wait no longer than through a Postgres failover under the same load: p50 at most 8 s,
    the longest at most 15 s."""
    sentinel = SentinelRedis().start()
    try:
        fault_stack.env.update(REDIS_URL=f"redis://127.0.0.1:{sentinel.master_port}/0",
                               REDIS_SENTINELS=sentinel.sentinels, REDIS_SENTINEL_MASTER=MASTER_NAME)
        stack = fault_stack.start(workers=3)
        accepted: list[str] = []
        statuses: list[int] = []

        def fail_over() -> None:
            sentinel.kill_master()
            wait_until(lambda: sentinel.master()[1] == sentinel.replica_port, timeout=30,
                       what="the sentinels to promote the replica")

        _under_load_while(stack, fail_over, lambda user, conversation_id, n: _post_recorded(
            user, conversation_id, f"Add task: sentinel {n}", statuses, accepted))
        wait_terminal(stack.connect, accepted, timeout=120)
        with stack.connect() as connection:
            figures = audit(connection, "redis-sentinel-failover", sent=len(statuses), ids=accepted)
            figures.extra = reply_latency(connection, accepted)
            waits = _reply_waits(connection, accepted)
        figures.report().assert_clean()
        assert 500 not in statuses and len(accepted) >= 20 * MESSAGES_EACH - 5, statuses
        assert waits[len(waits) // 2] <= 8 and waits[-1] <= 15, figures.extra
    finally:
        sentinel.stop()


def test_the_postgres_primary_killed_under_load_and_its_synchronous_standby_promoted(fault_stack: FaultStack) -> None:
    """A primary and a synchronous standby, one multi-host DATABASE_URL (libpq picks the primary
    by target_session_attrs=read-write) for every process and for the test's own database set-up.
    The primary dies (`-m immediate`) while 200 messages go into 20 conversations, posted as a
    client would, retrying a 503 with its Idempotency-Key; the standby is promoted. Nothing
    acknowledged is lost (synchronous commit), nothing is answered twice or out of order, no
    request answers 500, and replies wait at most 15 s (p99)."""
    standby = Standby(fault_stack.pgdata, fault_stack.pg_port).start(synchronous=True)
    try:
        multi_host = standby.database_url("chatq_faults")
        fault_stack.env["DATABASE_URL"] = multi_host
        stack = fault_stack.start(workers=3)
        accepted: list[str] = []
        statuses: list[int] = []

        def connect() -> psycopg.Connection:
            return psycopg.connect(libpq_url(multi_host), autocommit=True)

        def send(user: Api, conversation_id: str, n: int) -> None:
            key = str(uuid.uuid4())
            for _ in range(40):  # a client's retries, 0.5 s apart, with the same key
                response = _post_recorded(user, conversation_id, f"Add task: failover {n}", statuses, accepted,
                                          headers={"Idempotency-Key": key})
                if response is not None and response.status_code == 202:
                    return
                time.sleep(0.5)

        def fail_over() -> None:
            standby.kill_primary()
            standby.promote()

        _under_load_while(stack, fail_over, send)
        wait_terminal(connect, accepted, timeout=120)
        with connect() as connection:
            figures = audit(connection, "postgres-failover-sync", sent=len(statuses), ids=accepted)
            figures.extra = reply_latency(connection, accepted)
            waits = _reply_waits(connection, accepted)
        figures.report().assert_clean()
        assert len(set(accepted)) == 20 * MESSAGES_EACH and 500 not in statuses, sorted(set(statuses))
        assert waits[int(len(waits) * 0.99)] <= 15, figures.extra
        # make test's own set-up takes the same URL: a database made and migrated on the new primary.
        create_database(multi_host, "chatq_after_failover")
    finally:
        standby.stop()
