"""messages.response_options: what a /v1/responses call asked of its answer — `instructions` (the
model's system prompt), the app's own function `tools` and `tool_choice`, `max_output_tokens` —
read by the worker that answers it (docs/openai.md). A user message that answers the app's
function calls carries their outputs in its `tool_calls` ([{"call_id", "output"}]), as a reply
carries the calls it made.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("response_options", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "response_options")
