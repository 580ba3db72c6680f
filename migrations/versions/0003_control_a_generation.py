"""cancel, regenerate, resume: a cancelled status, reply versions, why a reply ended

- `message_status` gains `cancelled` (a question the user stopped; never pending again);
- a question may have several replies over time (each regenerate adds one): the one shown and
  generated from is the only one not `superseded`, which `uq_messages_current_reply` enforces in
  place of the old one-reply-per-question constraint;
- each reply keeps the question text it answered (`question_content`: an edit changes the
  question), why it ended (`finish`) and the tokens a model reported (`usage`).

Replies stored before this revision are current, ended with `stop`, and answered their question's
text as it is (nothing could edit it before).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISH = postgresql.ENUM("stop", "cancelled", "length", name="reply_finish")


def upgrade() -> None:
    # Allowed inside the migration's transaction since PostgreSQL 12, as long as nothing here uses
    # the new value before the commit.
    op.execute("ALTER TYPE message_status ADD VALUE IF NOT EXISTS 'cancelled'")
    FINISH.create(op.get_bind(), checkfirst=True)
    op.add_column("messages", sa.Column("superseded", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("messages", sa.Column("question_content", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("finish", postgresql.ENUM(name="reply_finish", create_type=False),
                                        nullable=True))
    op.add_column("messages", sa.Column("usage", postgresql.JSON(), nullable=True))
    op.execute("""
        UPDATE messages AS reply SET finish = 'stop', question_content = question.content
          FROM messages AS question WHERE reply.reply_to_id = question.id
    """)
    op.drop_constraint("uq_messages_reply_to_id", "messages", type_="unique")
    op.create_index("uq_messages_current_reply", "messages", ["reply_to_id"], unique=True,
                    postgresql_where=sa.text("NOT superseded"))
    op.create_index("ix_messages_reply_to", "messages", ["reply_to_id"], unique=False)


def downgrade() -> None:
    # Earlier versions of replies have no place in the old schema: they go.
    op.execute("DELETE FROM messages WHERE superseded")
    op.drop_index("ix_messages_reply_to", table_name="messages")
    op.drop_index("uq_messages_current_reply", table_name="messages")
    op.create_unique_constraint("uq_messages_reply_to_id", "messages", ["reply_to_id"])
    op.drop_column("messages", "usage")
    op.drop_column("messages", "finish")
    op.drop_column("messages", "question_content")
    op.drop_column("messages", "superseded")
    FINISH.drop(op.get_bind(), checkfirst=True)
    # PostgreSQL cannot drop an enum value: cancelled questions become failed, and the value stays.
    op.execute("UPDATE messages SET status = 'failed', error = 'Cancelled.' WHERE status = 'cancelled'")
