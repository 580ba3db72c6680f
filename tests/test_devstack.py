"""The embedded servers of `make run` / `make test` belong to their checkout (scripts/devstack.py):
two checkouts side by side each get their own, a server left behind by a deleted clone is never
reused, `make test` stops what it started and `make stop` stops only its own checkout's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from scripts.devstack import libpq_url
from tests.support import ROOT


def checkout(target: Path) -> Path:
    """A copy of this working tree (tracked and untracked files, not ignored ones) at `target`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def devstack(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CHATQ_PG_PORT",
                                                            "CHATQ_REDIS_PORT", "CHATQ_DATA_DIR")}
    return subprocess.run([sys.executable, "scripts/devstack.py", *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def exported(output: str) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in output.splitlines() if line.startswith("export"))


def data_directory(database_url: str) -> str:
    with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as connection:
        return connection.execute("SHOW data_directory").fetchone()[0]


def serving(url: str) -> bool:
    try:
        data_directory(url)
    except psycopg.OperationalError:
        return False
    return True


def pids(tree: Path) -> list[int]:
    found = []
    for pidfile in (tree / ".data/postgres/postmaster.pid", tree / ".data/redis/redis.pid"):
        if pidfile.exists():
            found.append(int(pidfile.read_text().split()[0]))
    return found


@pytest.fixture
def trees(tmp_path_factory):
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(checkout(tmp_path_factory.mktemp(name)))
        return made[-1]

    yield make
    for tree in made:
        if tree.exists():
            devstack(tree, "down")


def test_two_checkouts_side_by_side_each_use_their_own_servers(trees) -> None:
    first, second = trees("first"), trees("second")
    up_first, up_second = devstack(first, "up"), devstack(second, "up")
    assert up_first.returncode == up_second.returncode == 0, up_first.stderr + up_second.stderr
    env_first, env_second = exported(up_first.stdout), exported(up_second.stdout)
    assert env_first["DATABASE_URL"] != env_second["DATABASE_URL"]
    assert env_first["REDIS_URL"] != env_second["REDIS_URL"]
    assert Path(data_directory(env_first["DATABASE_URL"])).resolve() == (first / ".data/postgres").resolve()
    assert Path(data_directory(env_second["DATABASE_URL"])).resolve() == (second / ".data/postgres").resolve()
    # Again: each checkout finds its own servers running and reuses them.
    assert exported(devstack(first, "up").stdout) == env_first

    # `make stop` in one checkout stops its servers, not the other's.
    assert devstack(first, "down").returncode == 0
    assert not serving(env_first["DATABASE_URL"])
    assert serving(env_second["DATABASE_URL"])


def test_a_server_left_by_a_deleted_clone_is_not_reused(trees, tmp_path_factory) -> None:
    place = trees("clone")
    left = devstack(place, "up")
    assert left.returncode == 0, left.stderr
    orphans, orphan_env = pids(place), exported(left.stdout)
    try:
        shutil.rmtree(place)  # deleted with its servers still running: their data folder is gone
        checkout(place)  # a new clone where it was
        again = devstack(place, "up")
        assert again.returncode == 0, again.stderr
        fresh = exported(again.stdout)
        assert fresh["DATABASE_URL"] != orphan_env["DATABASE_URL"]
        assert Path(data_directory(fresh["DATABASE_URL"])).resolve() == (place / ".data/postgres").resolve()
        # The migrations run against it as `make run` runs them.
        migrated = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=place, text=True,
                                  env={**os.environ, "DATABASE_URL": fresh["DATABASE_URL"]}, capture_output=True)
        assert migrated.returncode == 0, migrated.stderr
    finally:
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_port_of_this_checkout_held_by_another_server_is_refused_with_what_to_do(trees) -> None:
    first, second = trees("holder"), trees("taker")
    env_first = exported(devstack(first, "up").stdout)
    port = env_first["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0]
    (second / ".data").mkdir(exist_ok=True)
    (second / ".data/ports").write_text(f"postgres={port}\nredis=1\n")  # as if the other one took it later
    refused = devstack(second, "up")
    assert refused.returncode != 0
    assert f"127.0.0.1:{port} is held by a PostgreSQL server that is not this checkout's" in refused.stderr
    assert serving(env_first["DATABASE_URL"])  # and it was left alone


def test_the_test_command_stops_the_servers_it_started(trees) -> None:
    tree = trees("tested")
    ran = devstack(tree, "test", "--version")
    assert ran.returncode == 0, ran.stderr
    assert pids(tree) == []  # neither server runs any more
    ports = dict(line.split("=") for line in (tree / ".data/ports").read_text().split())
    url = f"postgresql+psycopg://postgres@127.0.0.1:{ports['postgres']}/chatq"
    assert not serving(url)
