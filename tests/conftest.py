"""Fixtures: one test database built by Alembic, a Redis database of its own, and the real
processes (gunicorn, Celery workers) running against them.

DATABASE_URL / REDIS_URL name the servers (scripts/devstack.py starts the embedded ones when they
are unset). Tests never touch the database those URLs name: they create `chatq_test` beside it
and use Redis database 15, flushing it first (the second of `make test`'s two streams: `chatq_test_gw1`
and database 5; tests/support.py's STREAM).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from scripts.devstack import create_database, libpq_url
from tests.fake_llm import FakeModelServer
from tests.support import (
    ARTIFACTS,
    STREAM,
    TEST_SECRET,
    Api,
    Process,
    Stack,
    database_name,
    isolated_env,
    redis_database,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def database_url() -> str:
    server = os.environ.get("DATABASE_URL")
    if not server:
        pytest.exit("DATABASE_URL is not set: run the tests with `make test`", returncode=2)
    return create_database(server, database_name("test"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    server = os.environ.get("REDIS_URL")
    if not server:
        pytest.exit("REDIS_URL is not set: run the tests with `make test`", returncode=2)
    url = redis_database(server, "session")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def stack_env(database_url: str, redis_url: str) -> dict[str, str]:
    # Not this process's prometheus-client directory (the fast tier imports worker/, which makes one):
    # each process group of a stack makes its own.
    env = {key: value for key, value in os.environ.items() if key not in ("CHATQ_DEV", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        AUTH_SECRET=TEST_SECRET,
        RATE_LIMIT="",
        READ_RATE_LIMIT="",
        SWEEP_INTERVAL_SECONDS="1",
        FORGET_INTERVAL_SECONDS="2",  # beat's retention round, which a test waits for
        LEASE_SECONDS="10",
        SSE_HEARTBEAT_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    running = Stack(stack_env).start()
    yield running
    running.stop()


@pytest.fixture
def api(stack: Stack) -> Api:
    """A fresh user, so tests never see each other's data."""
    return Api(stack.url)


@pytest.fixture
def make_api(stack: Stack):
    return lambda user=None: Api(stack.url, user)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection to the test database, for asserting what is stored."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="session")
def model_server():
    server = FakeModelServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def llm_stack(stack_env, model_server):
    """A stack of its own (database, Redis database, web, worker, beat) whose workers use a model."""
    env = isolated_env(stack_env, "llm", ENGINE="openai", LLM_BASE_URL=model_server.base_url,
                       LLM_MODEL="fake-model", LLM_API_KEY="sk-test", LEASE_SECONDS="4",
                       LLM_MAX_TOKENS="60", LLM_COOLDOWN_SECONDS="0.2")  # a failing server: retried soon
    running = Stack(env, "llm").start()
    yield running
    running.stop()


@pytest.fixture
def model(model_server):
    model_server.reset()
    return model_server


@pytest.fixture
def llm_user(llm_stack) -> Api:
    return Api(llm_stack.url)


__all__ = ["Process", "Stack"]


@pytest.fixture
def db_llm(llm_stack) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_url(llm_stack.env["DATABASE_URL"]), autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="session")
def browser():
    if not shutil.which("chromium"):
        pytest.skip("no Chromium here: `make test` installs Debian's chromium where apt-get can")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield instance
        instance.close()


FIGURES = ARTIFACTS / "fault-figures.txt"


def pytest_collection_modifyitems(items) -> None:
    """The fast in-process tier first (a broken phrase of the assistant fails in seconds), then the
    tests against real processes, each group in its usual order."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/unit/") else 1)


def pytest_configure(config) -> None:
    """This pytest process and every process a test starts (gunicorn, Celery and its pool, beat,
    `make run`'s honcho) keep their temporary files in a folder of the run's own — pytest's
    temporary paths, multiprocessing's `pymp-*` folders, beat's schedule, prometheus-client's
    folders — which goes when pytest ends, with what a process killed by SIGKILL could not remove
    itself. Set before the test modules are imported: some make their metrics folder at import."""
    folder = Path(tempfile.mkdtemp(prefix=f"chatq-tests-{STREAM or 'main'}-"))
    config.stash[_TEMPORARY] = folder
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # this process too: gettempdir() reads TMPDIR again


def pytest_unconfigure(config) -> None:
    folder = config.stash.get(_TEMPORARY, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


_TEMPORARY = pytest.StashKey[Path]()


def pytest_sessionstart(session) -> None:
    if STREAM:
        return  # a stream of pytest-xdist: the run's controller has cleared them before it started
    FIGURES.unlink(missing_ok=True)
    # Each run's processes write their logs afresh: a check of what a log says (or does not) must
    # read this run's lines, not an earlier run's (the logs are appended to within a run).
    shutil.rmtree(ARTIFACTS / "logs", ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true) a skipped test is a failed one: a green run must have run every test, so
    a tool missing from the machine (Chromium, nginx, kubectl, Node, llama-server) fails the run
    instead of hiding what it would have tested. By hand, a test still skips and says why."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test: {reason}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_terminal_summary(terminalreporter) -> None:
    """The figure lines the fault and scale scenarios printed, together at the end of the run."""
    if FIGURES.exists():
        terminalreporter.section("fault-injection figures")
        for line in FIGURES.read_text().splitlines():
            terminalreporter.write_line(line)
