"""One declarative base for every table, with a naming convention so Alembic diffs stay stable."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from sqlalchemy import DateTime, MetaData, String, Uuid, func
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

uuid_pk = Annotated[uuid.UUID, mapped_column(Uuid, primary_key=True, default=uuid.uuid4)]
user_id = Annotated[str, mapped_column(String(128), nullable=False)]
created_at = Annotated[datetime, mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())]
updated_at = Annotated[
    datetime,
    mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()),
]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
