"""Where a bench's processes run: a fresh database of their own beside DATABASE_URL's (or the
embedded default's), a Redis database of their own, flushed, and nothing in the way of the load —
no rate limits, no dev mode, no shared metrics folder.

web_cpu.py, fairness.py and end_to_end.py build theirs by hand inside the checkout they measure,
which may be older than this module; only their TMPDIR and the alternation of their rounds
(`alternated`) come from here, in the checkout that runs them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Each bench's Redis database, chosen here only, so that no two benches share one (web_cpu.py's is
# 11, fairness.py's 6). The tests' are tests/support.py's: a bench and `make test` against the same
# Redis server may meet, so run them one at a time.
REDIS_DATABASES = {"data": 5, "openai": 6, "models": 7, "webhooks": 8, "lease": 9, "floor": 10, "waits": 12,
                   "matrix": 13}


def private_tmpdir(bench: str) -> str:
    """Point TMPDIR, which every process the bench starts inherits, at a folder of the bench's own,
    removed when the bench exits: a process it SIGKILLs cannot remove its temporary files
    (multiprocessing's pymp-* folders), as the tests' run folder does for them (tests/conftest.py)."""
    folder = tempfile.mkdtemp(prefix=f"chatq-bench-{bench}-")
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = None  # this process too: gettempdir() reads TMPDIR again
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def bench_environment(bench: str, database: str, secret: str, base: dict[str, str] | None = None,
                      **settings: str) -> dict[str, str]:
    """The environment of `bench`'s processes: `database` created anew (schema by Alembic), the
    bench's Redis database flushed, tokens signed with `secret`, and `settings` on top. `base`: what
    devstack.environment() returned, when the caller keeps it (to stop the servers it started)."""
    import redis

    from scripts import devstack

    tmpdir = private_tmpdir(bench)
    base = devstack.environment() if base is None else base
    redis_url = urlunsplit(urlsplit(base["REDIS_URL"])._replace(path=f"/{REDIS_DATABASES[bench]}"))
    redis.Redis.from_url(redis_url).flushdb()
    return {**{name: value for name, value in base.items() if name != "CHATQ_DEV"},
            "DATABASE_URL": devstack.create_database(base["DATABASE_URL"], database), "REDIS_URL": redis_url,
            "AUTH_SECRET": secret, "RATE_LIMIT": "", "READ_RATE_LIMIT": "", "PROMETHEUS_MULTIPROC_DIR": "",
            "TMPDIR": tmpdir, **settings}


def alternated(bench: Path, against: Path | None, rounds: int, *options: str) -> Iterator[tuple[int, Path, str]]:
    """Run `bench --measure <checkout> <options>` in each checkout, round after round, the baseline
    (`against`) first, so that the machine's drift hits both alike; yields (round, checkout, the
    last line it printed). The measuring code is `bench`, this checkout's file; the processes it
    measures are the checkout's, run by its own virtualenv when it has one (a change of
    requirements is measured too).

    Both checkouts' processes use the same servers: DATABASE_URL's and REDIS_URL's, or this
    checkout's embedded ones, started for the run if they are not running and stopped after it.
    Left to itself, each checkout's devstack would start embedded servers of its own — on the
    ports it remembers, which another checkout's may hold — and leave them running."""
    from scripts import devstack

    here = Path(bench).resolve().parent.parent
    roots = ([against.resolve()] if against else []) + [here]
    started: list[str] = []
    servers = devstack.environment(started)
    env = {**os.environ, "DATABASE_URL": servers["DATABASE_URL"], "REDIS_URL": servers["REDIS_URL"]}
    try:
        for round_ in range(1, rounds + 1):
            for root in roots:
                own = root / ".venv" / "bin" / "python"
                python = str(own if own.exists() else sys.executable)
                output = subprocess.run([python, str(bench), "--measure", str(root), *options],
                                        check=True, capture_output=True, text=True, env=env).stdout
                yield round_, root, output.splitlines()[-1]
    finally:
        devstack.stop_started(started)
