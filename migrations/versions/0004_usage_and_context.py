"""what a model was sent and what it cost: a reply's context, and each user's usage per day

- `messages.context`: on a model's reply, how much of the history it was sent
  (`{"messages_sent", "messages_total"}`: a long conversation sends its most recent part);
- `daily_usage`: per user and UTC day, messages sent and model tokens used — counted by the
  statements that accept a message and commit a reply, read by quotas and `GET /usage`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("context", postgresql.JSON(), nullable=True))
    op.create_table(
        "daily_usage",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("messages", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "day", name=op.f("pk_daily_usage")),
    )


def downgrade() -> None:
    op.drop_table("daily_usage")
    op.drop_column("messages", "context")
