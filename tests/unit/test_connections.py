"""Where Redis is (models/process/connections.py): REDIS_URL alone, or the master that REDIS_SENTINELS
name — the broker, the limiter and every client derive theirs from the same settings."""

from __future__ import annotations

import pytest

from models import ConfigError, Settings
from models.process.connections import broker_options, broker_url, limiter_storage

BASE = {"DATABASE_URL": "postgresql+psycopg://x/y", "REDIS_URL": "redis://:s%40cret@10.0.0.9:6379/3"}
SENTINELS = {**BASE, "REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380", "REDIS_SENTINEL_MASTER": "chatq"}


def test_without_sentinels_everything_uses_redis_url() -> None:
    settings = Settings.from_env(BASE)
    assert broker_url(settings) == BASE["REDIS_URL"] and broker_options(settings) == {}
    assert limiter_storage(settings)[0] == BASE["REDIS_URL"]


def test_under_sentinel_every_use_follows_the_master_they_name() -> None:
    settings = Settings.from_env(SENTINELS)
    # kombu's sentinel transport: one URL per sentinel, REDIS_URL's database and password kept.
    assert broker_url(settings) == "sentinel://:s%40cret@10.0.0.1:26379/3;sentinel://:s%40cret@10.0.0.2:26380/3"
    assert broker_options(settings)["master_name"] == "chatq"
    uri, options = limiter_storage(settings)
    assert uri == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/chatq"
    assert options["db"] == 3 and options["password"] == "s@cret" and options["use_replicas"] is False


@pytest.mark.parametrize(("variables", "named"), [
    ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
    ({"REDIS_SENTINELS": "10.0.0.1", "REDIS_SENTINEL_MASTER": "chatq"}, "host:port"),
    ({"TIER_WEIGHTS": "pro=four"}, "tier=weight"),
])
def test_a_setting_that_does_not_describe_redis_or_the_tiers_stops_the_process(variables, named) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({**BASE, **variables})


def test_every_test_stack_has_a_redis_database_of_its_own() -> None:
    from tests.support import REDIS_DATABASES, SECOND_STREAM, STREAMS, redis_database

    every = [*REDIS_DATABASES.values(), *SECOND_STREAM.values()]
    assert len(set(every)) == len(every) and 0 not in every and set(SECOND_STREAM) <= set(REDIS_DATABASES)
    assert redis_database("redis://127.0.0.1:6379", "llm", stream=0) == "redis://127.0.0.1:6379/13"
    assert redis_database("redis://:pw@h:1/0", "unit", stream=0) == "redis://:pw@h:1/14"
    assert redis_database("redis://:pw@h:1/0", "unit", stream=1) == "redis://:pw@h:1/4"
    assert redis_database("redis://h:1/0", "fair", stream=1) == "redis://h:1/6"  # one module's: one stream
    with pytest.raises(RuntimeError, match="at most"):
        redis_database("redis://h:1/0", "unit", stream=STREAMS)
