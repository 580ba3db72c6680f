"""Web CPU per message, this checkout against a baseline checkout, alternated in one run.

    git worktree add --detach /tmp/chatq-base <rev>           # the baseline: any earlier commit
    .venv/bin/python bench/web_cpu.py --against /tmp/chatq-base [--messages 400] [--rounds 3]
        [--engine-delay-ms 100]     # each reply takes this long: every long-poll waits and is woken

For each round and each checkout (the baseline first), starts that checkout's gunicorn (ONE process)
and Celery worker on a fresh `chatq_webcpu` database beside DATABASE_URL's (or the embedded
default's), then one user sends messages one after another, each a POST and a long-poll
(`?wait=30`) until answered — exactly what a chat client does — and the web process's CPU time
(user + system, from the kernel) is divided by the messages. One user, one request at a time: no
batching flatters the figure, and what is measured is the cost of a message, not of a load.
Everything else on the machine adds noise (the same checkout moves by 10-20% between rounds): read
the ratio of the medians. Not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-webcpu-0123456789abcdefghijklmnop"  # noqa: S105 - a bench database's
BENCH_REDIS_DB = 11


def measure(messages: int, engine_delay_ms: int) -> float:
    """Run in the checkout being measured (its bench/ may not have this file: see main)."""
    import psutil
    import requests

    from bench.load import token
    from scripts import devstack
    from tests.support import Web, Worker

    base = devstack.environment()
    database_url = devstack.create_database(base["DATABASE_URL"], "chatq_webcpu")
    redis_url = base["REDIS_URL"].rsplit("/", 1)[0] + f"/{BENCH_REDIS_DB}"
    env = {**{k: v for k, v in base.items() if k != "CHATQ_DEV"}, "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "AUTH_SECRET": SECRET, "RATE_LIMIT": "", "READ_RATE_LIMIT": "",
           "PROMETHEUS_MULTIPROC_DIR": "", "ENGINE_DELAY_MS": str(engine_delay_ms)}
    worker = Worker("bench-webcpu-worker", env, concurrency=2).start()
    web = Web("bench-webcpu-web", env, workers=1).start()
    try:
        assert web.popen is not None
        process = psutil.Process(web.popen.pid).children()[0]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token(SECRET, 'bench-webcpu-' + uuid.uuid4().hex[:6])}"
        cid = session.post(web.url + "/api/v1/conversations", json={}).json()["id"]

        def send(count: int) -> float:
            before = sum(process.cpu_times()[:2])
            for n in range(count):
                accepted = session.post(f"{web.url}/api/v1/conversations/{cid}/messages",
                                        json={"content": f"add bench {n}"}).json()
                while session.get(web.url + accepted["poll_url"], params={"wait": 30}).json()["status"] not in (
                        "answered", "failed", "cancelled"):
                    pass
            return (sum(process.cpu_times()[:2]) - before) * 1000 / count

        send(20)  # warm up: pools, prepared statements
        return send(messages)
    finally:
        web.kill(signal.SIGKILL)
        worker.kill(signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="a checkout of the baseline (with its own .venv or this one's)")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine-delay-ms", type=int, default=0,
                        help="how long the built-in engine takes per reply (0: the long-poll often finds it answered)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure is not None:
        sys.path.insert(0, str(args.measure))
        os.chdir(args.measure)
        print(f"{measure(args.messages, args.engine_delay_ms):.3f}")
        return
    sys.path.insert(0, str(HERE))
    from bench.environment import alternated, private_tmpdir

    private_tmpdir("webcpu")  # the measured processes' temporary files, whichever checkout they are
    roots = ([args.against.resolve()] if args.against else []) + [HERE]
    figures: dict[Path, list[float]] = {root: [] for root in roots}
    for round_, root, line in alternated(Path(__file__), args.against, args.rounds, "--messages",
                                         str(args.messages), "--engine-delay-ms", str(args.engine_delay_ms)):
        figures[root].append(float(line.split()[-1]))
        print(f"round {round_}, {root}: {figures[root][-1]:.2f} ms of web CPU per message", flush=True)
    medians = {root: statistics.median(values) for root, values in figures.items()}
    print()
    for root, median in medians.items():
        ratio = f" ({median / medians[roots[0]]:.2f}x the baseline)" if args.against and root != roots[0] else ""
        print(f"{root}: median {median:.2f} ms of web CPU per message{ratio}")


if __name__ == "__main__":
    main()
