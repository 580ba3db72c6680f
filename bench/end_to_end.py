"""Messages answered per second end to end, this checkout against a baseline checkout, alternated.

    git worktree add --detach /tmp/chatq-base 473fbb8          # the baseline: FIFO, before fair share
    .venv/bin/python bench/end_to_end.py --against /tmp/chatq-base [--users 16] [--messages 25]
        [--rounds 4] [--slots 2]

For each round and each checkout (the baseline first), starts that checkout's gunicorn (one
process) and one Celery worker with `--slots` pool processes on a fresh `chatq_e2e` database, then
`--users` users each send `--messages` messages one after another — a POST, then long-polls
(`?wait=30`) until it is answered — and the answered messages are divided by the wall time. A
closed loop where the queue itself is the work: the built-in engine answers in microseconds, so
what is measured is what chatq does around a message — accept, enqueue, claim (fair share),
commit, wake the long-poll — not a model. Read the ratio of the medians: the machine moves single
rounds by 10-20%. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-e2e-0123456789abcdefghijklmnopq"  # noqa: S105 - a bench database's
BENCH_REDIS_DB = 4  # set here, not in bench/environment.py: the baseline checkout predates it


def cpu_seconds(processes: dict[str, list]) -> dict[str, float]:
    """User + system CPU seconds of each part so far (a process gone meanwhile counts as nothing)."""
    import psutil

    spent = {}
    for part, members in processes.items():
        total = 0.0
        for process in members:
            try:
                total += sum(process.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
        spent[part] = total
    return spent


def parts(web_pid: int, worker_pid: int, database: str) -> dict[str, list]:
    """The processes that do the work, by part: web, the worker's main process and its pool,
    the Postgres backends of the bench's database and the Redis server."""
    import psutil

    worker = psutil.Process(worker_pid)
    backends, redis_servers = [], []
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("postgres:") and f" {database} " in command:
            backends.append(process)
        elif (process.info["name"] or "").startswith("redis-server"):
            redis_servers.append(process)
    return {"web": psutil.Process(web_pid).children(), "worker main": [worker],
            "worker pool": worker.children(), "postgres": backends, "redis": redis_servers}


def measure(users: int, messages: int, slots: int) -> tuple[float, dict[str, float]]:
    """Run in the checkout being measured (its bench/ may not have this file: see main)."""
    import requests

    from bench.load import token
    from scripts import devstack
    from tests.support import Web, Worker

    base = devstack.environment()
    database_url = devstack.create_database(base["DATABASE_URL"], "chatq_e2e")
    redis_url = base["REDIS_URL"].rsplit("/", 1)[0] + f"/{BENCH_REDIS_DB}"
    env = {**{k: v for k, v in base.items() if k != "CHATQ_DEV"}, "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "AUTH_SECRET": SECRET, "RATE_LIMIT": "", "READ_RATE_LIMIT": "",
           "PROMETHEUS_MULTIPROC_DIR": ""}
    worker = Worker("bench-e2e-worker", env, concurrency=slots).start()
    web = Web("bench-e2e-web", env, workers=1).start()
    errors: list[str] = []
    try:
        def converse(count: int) -> None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token(SECRET, 'bench-e2e-' + uuid.uuid4().hex[:8])}"
            try:
                cid = session.post(web.url + "/api/v1/conversations", json={}).json()["id"]
                for n in range(count):
                    accepted = session.post(f"{web.url}/api/v1/conversations/{cid}/messages",
                                            json={"content": f"add task e2e {n}"})
                    if accepted.status_code != 202:
                        errors.append(f"POST {accepted.status_code}")
                        continue
                    poll_url = web.url + accepted.json()["poll_url"]
                    while session.get(poll_url, params={"wait": 30}).json()["status"] not in (
                            "answered", "failed", "cancelled"):
                        pass
            except Exception as error:  # reported by the caller: an error in a thread must not pass silently
                errors.append(repr(error))

        def run(count: int) -> float:
            threads = [threading.Thread(target=converse, args=(count,)) for _ in range(users)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return users * count / (time.perf_counter() - started)

        run(3)  # warm up: pools, prepared statements, each process's first requests
        assert web.popen is not None and worker.popen is not None
        measured = parts(web.popen.pid, worker.popen.pid, "chatq_e2e")
        before = cpu_seconds(measured)
        rate = run(messages)
        after = cpu_seconds(measured)
        if errors:
            raise SystemExit(f"{len(errors)} errors, first: {errors[0]}")
        per_message = {part: (after[part] - before[part]) * 1000 / (users * messages) for part in after}
        return rate, per_message
    finally:
        web.kill(signal.SIGKILL)
        worker.kill(signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="a checkout of the baseline (with its own .venv or this one's)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--messages", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2, help="the worker's pool processes")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure is not None:
        sys.path.insert(0, str(args.measure))
        os.chdir(args.measure)
        rate, per_message = measure(args.users, args.messages, args.slots)
        print(json.dumps({"rate": rate, "cpu_ms": per_message}))
        return
    sys.path.insert(0, str(HERE))
    from bench.environment import alternated, private_tmpdir

    private_tmpdir("e2e")  # the measured processes' temporary files, whichever checkout they are
    roots = ([args.against.resolve()] if args.against else []) + [HERE]
    figures: dict[Path, list[float]] = {root: [] for root in roots}
    cpu: dict[Path, list[dict[str, float]]] = {root: [] for root in roots}
    for round_, root, line in alternated(Path(__file__), args.against, args.rounds, "--users", str(args.users),
                                         "--messages", str(args.messages), "--slots", str(args.slots)):
        measured = json.loads(line)
        figures[root].append(measured["rate"])
        cpu[root].append(measured["cpu_ms"])
        spent = ", ".join(f"{part} {ms:.2f}" for part, ms in measured["cpu_ms"].items())
        print(f"round {round_}, {root}: {measured['rate']:.1f} messages/s; CPU ms a message: {spent}", flush=True)
    medians = {root: statistics.median(values) for root, values in figures.items()}
    print()
    for root, median in medians.items():
        ratio = f" ({median / medians[roots[0]]:.2f}x the baseline)" if args.against and root != roots[0] else ""
        spent = ", ".join(f"{part} {statistics.median(round_[part] for round_ in cpu[root]):.2f}"
                          for part in cpu[root][0])
        print(f"{root}: median {median:.1f} messages/s{ratio}; median CPU ms a message: {spent}")


if __name__ == "__main__":
    main()
