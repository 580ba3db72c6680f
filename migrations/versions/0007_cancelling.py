"""a `cancelling` status: a question whose generation was asked to stop, until the worker has
stored the text written so far and made it `cancelled`

A terminal status is final: before this revision a cancelled question read `cancelled` a moment
before its partial reply was stored, and a client whose wait ended there showed no text.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:55:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TYPE message_status ADD VALUE IF NOT EXISTS 'cancelling' AFTER 'processing'")


def downgrade() -> None:
    # Postgres cannot drop an enum value: questions still cancelling become cancelled.
    op.execute("UPDATE messages SET status = 'cancelled' WHERE status = 'cancelling'")
