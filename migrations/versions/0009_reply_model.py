"""messages.model: which model wrote a reply (the contract's "model" on an assistant message)

With a pool of model servers (LLM_SERVERS) the replies of one conversation may come from different
models; the reply says which. Null for the built-in engine and for replies stored before this
revision. Adding a nullable column without a default does not rewrite the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 07:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("model", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "model")
