"""app_metadata: the key-value pairs an app attaches through the OpenAI-compatible API — to a
conversation (`/v1/conversations`) and to a response (its question's row). Stored and shown back,
never read by chatq. (`metadata` is SQLAlchemy's own attribute on a model, hence the name.)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("app_metadata", postgresql.JSONB(), nullable=True))
    op.add_column("messages", sa.Column("app_metadata", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "app_metadata")
    op.drop_column("conversations", "app_metadata")
