"""The fast tier: no gunicorn, no Celery worker. The app through Flask's test client, the reply engine
called directly, and the accepting statement on a connection rolled back after each test — all
against a real Postgres (a `chatq_unit` database built by Alembic) and a real Redis (database 14).

    make unit        # this tier alone, in seconds; `make test` runs it first, then everything else
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
import redis
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from models import Settings
from scripts.devstack import create_database
from tests.support import TEST_SECRET, database_name, redis_database


@pytest.fixture(scope="session")
def unit_settings() -> Settings:
    server, broker = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not server or not broker:
        pytest.exit("DATABASE_URL / REDIS_URL are not set: run the tests with `make unit` or `make test`", returncode=2)
    redis_url = redis_database(broker, "unit")
    redis.Redis.from_url(redis_url).flushdb()  # the jobs the views sent last time, which no worker reads
    return Settings.from_env({"DATABASE_URL": create_database(server, database_name("unit")), "REDIS_URL": redis_url,
                              "AUTH_SECRET": TEST_SECRET, "RATE_LIMIT": "", "READ_RATE_LIMIT": ""})


@pytest.fixture(scope="session")
def engine(unit_settings: Settings) -> Iterator[Engine]:
    made = create_engine(unit_settings.database_url)
    yield made
    made.dispose()


@pytest.fixture(scope="session")
def autocommit(engine: Engine) -> Engine:
    """What the worker's todo tools write through: each statement its own transaction."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@pytest.fixture
def rolled_back(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (pypi/warehouse's
    db_session): commits inside it become savepoints, and nothing outlives the test."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    yield session
    session.close()
    outer.rollback()
    connection.close()


@pytest.fixture(scope="session")
def app(unit_settings: Settings):
    from web import create_app

    return create_app(settings=unit_settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_api(app):
    """Users of the API (tests/support.py's Api), answered by the app in this process."""
    from tests.support import Api

    from .in_process import BASE_URL, InProcess

    def make(user: str | None = None) -> Api:
        api = Api(BASE_URL, user)
        api.http.mount(BASE_URL, InProcess(app))
        return api

    return make


@pytest.fixture
def api(make_api):
    """A fresh user, so tests never see each other's data."""
    return make_api()


@pytest.fixture
def db(unit_settings: Settings) -> Iterator[psycopg.Connection]:
    """A direct connection to the fast tier's database, for asserting what is stored."""
    from scripts.devstack import libpq_url

    with psycopg.connect(libpq_url(unit_settings.database_url), autocommit=True) as connection:
        yield connection
