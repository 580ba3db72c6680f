"""messages.pieces: the lengths of the pieces a reply was streamed in, so that its stream's events
(the Responses API's sequence numbers, docs/openai.md) are numbered from Postgres alone once the
reply is stored, on any node, for as long as the reply is kept. Null: the reply was not streamed
(one piece, the whole text).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("pieces", postgresql.ARRAY(sa.Integer()), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "pieces")
