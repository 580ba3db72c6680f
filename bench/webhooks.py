"""What a webhook on every reply costs: replies per second with and without, in one run.

    python bench/webhooks.py [--users 8] [--messages 15]

One web node, one worker, one webhooks worker and beat on this machine's servers (the embedded
ones unless DATABASE_URL / REDIS_URL are set), and a receiver on loopback. Two phases with the same
load — N users each sending M messages one after another and long-polling each reply — with no
endpoint registered, and with one endpoint per user (every reply becomes an event, a delivery and a
signed POST): after a warm-up, three rounds of each, alternated; the medians. Prints replies/s of
both, their ratio, and how long after the reply's commit the receiver got its event (p50/p95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere


from bench.environment import bench_environment
from scripts import devstack
from tests.support import TEST_SECRET, Api, Beat, Web, Worker
from tests.test_webhooks import Receiver, WebhooksWorker


def phase(url: str, users: int, messages: int, receiver: Receiver | None) -> tuple[float, list[str]]:
    apis = [Api(url) for _ in range(users)]
    if receiver is not None:
        for api in apis:
            assert api.post("/api/v1/webhooks", json={"url": receiver.url}).status_code == 201
    done: list[str] = []
    lock = threading.Lock()

    def chat(api: Api) -> None:
        conversation_id = None
        for n in range(messages):
            conversation_id, answered = api.ask(f"Add task: bench {n}", conversation_id)
            with lock:
                done.append(answered["reply"]["created_at"])

    threads = [threading.Thread(target=chat, args=(api,)) for api in apis]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(done) / (time.perf_counter() - started), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--messages", type=int, default=15)
    arguments = parser.parse_args()
    started: list[str] = []
    base = devstack.environment(started)
    env = bench_environment("webhooks", "chatq_bench_webhooks", TEST_SECRET, base, WEBHOOK_ALLOW_PRIVATE="1")
    processes = [Web("bench-webhooks-web", env).start(), Worker("bench-webhooks-worker", env).start(),
                 WebhooksWorker("bench-webhooks-deliverer", env).start(), Beat("bench-webhooks-beat", env).start()]
    receiver = Receiver()
    try:
        phase(processes[0].url, arguments.users, arguments.messages, None)  # warm-up: pools, caches
        plains, pusheds = [], []
        for _round in range(3):  # alternated: the machine's drift falls on both alike
            plains.append(phase(processes[0].url, arguments.users, arguments.messages, None)[0])
            pusheds.append(phase(processes[0].url, arguments.users, arguments.messages, receiver)[0])
        plain, pushed = statistics.median(plains), statistics.median(pusheds)
        expected = 3 * arguments.users * arguments.messages
        deadline = time.monotonic() + 60
        while len(receiver.calls) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        lags = []
        for call in receiver.calls:
            reply = json.loads(call["body"])["data"]["reply"]
            committed = datetime.fromisoformat(reply["created_at"].replace("Z", "+00:00")).timestamp()
            lags.append(call["wall"] - committed)
    finally:
        receiver.close()
        for process in processes:
            process.stop()
        devstack.stop_started(started)
    lags.sort()
    print(f"{arguments.users} users x {arguments.messages} messages, one web node, one worker, one webhooks worker")
    print(f"replies/s without webhooks: {plain:.1f} (median of {', '.join(f'{x:.1f}' for x in plains)})")
    print(f"replies/s with a webhook on every reply: {pushed:.1f} (median of {', '.join(f'{x:.1f}' for x in pusheds)})"
          f"  ratio {pushed / plain:.2f}")
    print(f"events received: {len(receiver.calls)} of {expected}; reply commit -> receiver "
          f"p50 {statistics.median(lags):.2f} s, p95 {lags[int(len(lags) * 0.95)]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
