"""tool calls stored as json, not jsonb

An assistant message's tool calls are written once and always read whole — by the worker, for
every message of a conversation's history, on every reply. Postgres sends a json value as the text
it stored, while jsonb is re-serialised on every read: at 10,000 messages of history that was
half of the history's cost (bench/matrix.py). Nothing queries inside them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("messages", "tool_calls", type_=postgresql.JSON(), existing_nullable=True,
                    postgresql_using="tool_calls::json")


def downgrade() -> None:
    op.alter_column("messages", "tool_calls", type_=postgresql.JSONB(astext_type=sa.Text()), existing_nullable=True,
                    postgresql_using="tool_calls::jsonb")
