"""A streaming standby of the fault stack's PostgreSQL, made with the embedded wheel's own
`pg_basebackup`, on a free loopback port; and the libpq multi-host URL that names both servers, as
a deployment behind Patroni or CloudNativePG would."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import psycopg

from scripts.embedded import DEV_SYSTEM_USER, _as_pg_user, _pg_bin, start_postgres, stop_postgres
from tests.support import free_port, wait_until


class Standby:
    def __init__(self, primary_data: Path, primary_port: int) -> None:
        self.primary_data, self.primary_port = primary_data, primary_port
        self.data = primary_data.parent / "standby"
        self.port = free_port()

    def start(self, *, synchronous: bool) -> Standby:
        self.data.mkdir(mode=0o700)
        run_as = _as_pg_user()
        if run_as:
            entry = pwd.getpwnam(DEV_SYSTEM_USER)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        subprocess.run([_pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres",
                        "-D", str(self.data), "-R", "-X", "stream", "-c", "fast"],
                       check=True, capture_output=True, **run_as)
        start_postgres(self.data, self.port)
        if synchronous:  # after the base backup: the standby, once promoted, commits on its own
            with self._primary() as primary:
                primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                primary.execute("SELECT pg_reload_conf()")
                wait_until(lambda: primary.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
                           == ("sync",), timeout=30, what="the standby to replicate synchronously")
        return self

    def database_url(self, database: str) -> str:
        return (f"postgresql+psycopg://postgres@/{database}?host=127.0.0.1:{self.primary_port}"
                f"&host=127.0.0.1:{self.port}&target_session_attrs=read-write")

    def kill_primary(self) -> None:
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(self.primary_data), "-m", "immediate", "-w", "stop"],
                       check=True, capture_output=True, **_as_pg_user())

    def promote(self) -> None:
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "promote"], check=True, capture_output=True,
                       **_as_pg_user())

    def stop(self) -> None:
        stop_postgres(self.data)

    def _primary(self) -> psycopg.Connection:
        return psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.primary_port}/postgres", autocommit=True)
