"""a user's data: full-text search over messages, conversations that expire, and erasures

- messages.search: a stored tsvector generated from the content, in the text-search configuration
  SEARCH_CONFIG names (read here, once: Postgres needs a fixed configuration for a generated
  column; docs/operations.md says how to change it later), with a GIN index; and
  ix_messages_user_created, which the search by newest, the export and an erasure walk a user's
  messages by. Adding a stored column rewrites the table: on a large deployment, run this
  revision in a quiet hour.
- conversations.ttl_days and .temporary: a conversation's own lifetime after its last message
  (temporary: one day), beside the operator's RETENTION_DAYS; ix_conversations_idle finds them.
- erasures: the audit of DELETE /me, and the work list of the worker that carries it out. While
  it runs it holds the user id; once done only a keyed digest of it and the counts of what went.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from models import Settings

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    config = Settings.from_env().search_config
    op.add_column("messages", sa.Column(
        "search", postgresql.TSVECTOR(),
        sa.Computed(f"to_tsvector('{config}'::regconfig, content)", persisted=True), nullable=True))
    op.create_index("ix_messages_search", "messages", ["search"], postgresql_using="gin")
    op.create_index("ix_messages_user_created", "messages",
                    ["user_id", sa.text("created_at DESC"), sa.text("id DESC")])

    op.add_column("conversations", sa.Column("ttl_days", sa.SmallInteger(), nullable=True))
    op.add_column("conversations", sa.Column("temporary", sa.Boolean(), nullable=False,
                                             server_default=sa.text("false")))
    op.create_check_constraint(op.f("ck_conversations_ttl_days"), "conversations", "ttl_days BETWEEN 1 AND 3650")
    op.create_index("ix_conversations_idle", "conversations", ["updated_at"])

    # Deleting a message or an event makes Postgres look up the rows referring to it (cascades,
    # SET NULL): without these, every deleted message scanned the webhook tables whole. And a
    # user's events are found by their user for an erasure.
    op.create_index("ix_webhook_events_question", "webhook_events", ["question_id"])
    op.create_index("ix_webhook_events_reply", "webhook_events", ["reply_id"])
    op.create_index("ix_webhook_events_user", "webhook_events", ["user_id"])
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"])

    op.create_table(
        "erasures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("user_digest", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erased", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_index("uq_erasures_running", "erasures", ["user_id"], unique=True,
                    postgresql_where=sa.text("finished_at IS NULL"))
    op.create_index("ix_erasures_digest", "erasures", ["user_digest"])


def downgrade() -> None:
    op.drop_table("erasures")
    op.drop_index("ix_webhook_deliveries_event", table_name="webhook_deliveries")
    for name in ("ix_webhook_events_user", "ix_webhook_events_reply", "ix_webhook_events_question"):
        op.drop_index(name, table_name="webhook_events")
    op.drop_index("ix_conversations_idle", table_name="conversations")
    op.drop_constraint(op.f("ck_conversations_ttl_days"), "conversations", type_="check")
    op.drop_column("conversations", "temporary")
    op.drop_column("conversations", "ttl_days")
    op.drop_index("ix_messages_user_created", table_name="messages")
    op.drop_index("ix_messages_search", table_name="messages")
    op.drop_column("messages", "search")
