"""The fault-injection stack: its own PostgreSQL and Redis (so tests may stop and kill them), a web
node or two, several Celery workers and beat, all real processes on loopback."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from scripts import devstack
from scripts.devstack import create_database
from tests.support import TEST_SECRET, Beat, Web, Worker, free_port

FAULT_ENV = {
    "ENGINE_DELAY_MS": "150",      # slow enough to be killed mid-generation
    "LEASE_SECONDS": "3",          # a dead worker's claim runs out quickly
    "SWEEP_INTERVAL_SECONDS": "1",
    "MAX_ATTEMPTS": "20",          # killing is frequent here; giving up is not what is tested
    "RECHECK_SECONDS": "0.5",
}


@dataclass
class FaultStack:
    env: dict[str, str]
    pgdata: Path
    pg_port: int
    redis_dir: Path
    redis_port: int
    webs: list[Web] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    beat: Beat | None = None

    def start(self, *, webs: int = 1, workers: int = 3, beat: bool = True) -> FaultStack:
        self.webs = [Web(f"fault-web{i}", self.env).start() for i in range(webs)]
        self.workers = [self.new_worker(i) for i in range(workers)]
        if beat:
            self.beat = Beat("fault-beat", self.env)
            self.beat.start()
        return self

    def new_worker(self, index: int) -> Worker:
        return Worker(f"fault-worker{index}", self.env, concurrency=1).start()

    def stop(self) -> None:
        for process in [*self.webs, *self.workers, *([self.beat] if self.beat else [])]:
            process.kill()

    def stop_postgres(self) -> None:
        devstack.stop_postgres(self.pgdata)

    def start_postgres(self) -> None:
        devstack.start_postgres(self.pgdata, self.pg_port)

    def kill_redis(self) -> None:
        devstack.stop_redis(self.redis_dir, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while devstack._port_open(self.redis_port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_redis(self) -> None:
        devstack.start_redis(self.redis_dir, self.redis_port)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.pg_port}/chatq_faults", autocommit=True)


def _started_on_a_free_port(start: Callable[[Path, int], bool], folder: Path) -> int:
    """Start a server on a port the system just called free, and try another when something took it
    in between: the other test stream starts servers on free ports too (devstack refuses a port a
    foreign server holds, with SystemExit)."""
    for _ in range(5):
        port = free_port()
        try:
            start(folder, port)
        except SystemExit:
            continue
        return port
    raise RuntimeError(f"no free port held for {folder.name} in five tries")


@pytest.fixture
def fault_stack() -> Iterator[FaultStack]:
    folder = Path(tempfile.mkdtemp(prefix="chatq-faults-"))
    folder.chmod(0o755)
    pg_port = _started_on_a_free_port(devstack.start_postgres, folder / "postgres")
    redis_port = _started_on_a_free_port(devstack.start_redis, folder / "redis")
    server = f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/chatq"
    env = {key: value for key, value in os.environ.items() if key not in ("CHATQ_DEV", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(FAULT_ENV, DATABASE_URL=create_database(server, "chatq_faults"),
               REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", AUTH_SECRET=TEST_SECRET, RATE_LIMIT="",
               READ_RATE_LIMIT="", PYTHONUNBUFFERED="1")
    stack = FaultStack(env, folder / "postgres", pg_port, folder / "redis", redis_port)
    yield stack
    stack.stop()
    devstack.stop_redis(stack.redis_dir, signal.SIGKILL)
    devstack.stop_postgres(stack.pgdata)
    shutil.rmtree(folder, ignore_errors=True)  # ~60 MB of data a test: nothing is left behind


class Killer(threading.Thread):
    """SIGKILLs a random worker (the whole process group, as a crashed node) every `period`
    seconds and starts a replacement, until stopped."""

    def __init__(self, stack: FaultStack, period: float = 1.0, seed: int = 7) -> None:
        super().__init__(daemon=True)
        self.stack, self.period, self.random = stack, period, random.Random(seed)
        self.stopped = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            index = self.random.randrange(len(self.stack.workers))
            self.stack.workers[index].kill(signal.SIGKILL)
            self.kills += 1
            self.stack.workers[index] = self.stack.new_worker(index)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
