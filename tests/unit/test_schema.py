"""The schema the tests (and every deployment) run on is built by Alembic's migrations; the models
the code queries through must describe that same schema, or a query would meet a column of another
type than the one it was written for."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from models import Base, Settings


def test_the_migrations_build_the_schema_the_models_describe(unit_settings: Settings) -> None:
    engine = create_engine(unit_settings.database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                           Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
