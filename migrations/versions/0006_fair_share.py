"""fair share: per-user virtual time, lanes, expiry, the `expired` status

Workers no longer answer the message their job names: a job is a doorbell, and the claim takes the
fairest message that can start (worker/claim_sql.py, docs/scheduler.md). What it needs:

- `messages.user_id`: whose message it is, so that a user's waiting and running messages are
  counted from an index (caps), not by walking their conversations (backfilled from them);
- `messages.lane` (0 interactive, 1 batch), `fair_tag` (the message's virtual start time in its
  user's share of its lane), `expires_at` (not started by then: `expired`), `not_before` (a
  generation given back waits out its backoff);
- `user_shares`: each user's weight per lane and where their share's last message ends;
  `next_fair_tag()` hands out the next tag (below), in one place for every statement that queues
  a message;
- the claim's access path (`ix_messages_ready`: queued messages by lane and tag), the running
  messages' (`ix_messages_running`, whose largest tag is the lane's virtual time), a user's
  pending ones (`ix_messages_user_pending`), and the sweeper's (expiring, aging, expired leases).

Messages queued before this revision get tag 0: they start first, in no particular order.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Start-time fair queueing: a message's tag is its virtual start time, max(the lane's virtual time,
# the end of its user's previous message), and its user's share then ends 1/weight later
# (user_shares.last_tag). The lane's virtual time is the tag of the newest generation running, else
# the oldest waiting message's, else the latest end handed out (an idle service keeps its clock: a
# user who was idle starts level with the others, never behind an old backlog, and never ahead of
# one by credit saved up while away). Three lookups of small or partial indexes: O(log n) in the
# number of waiting messages.
NEXT_FAIR_TAG = """
CREATE FUNCTION next_fair_tag(who varchar, which_lane smallint, weight float8) RETURNS float8
LANGUAGE sql VOLATILE AS $$
    INSERT INTO user_shares AS s (user_id, lane, weight, last_tag)
    VALUES (who, which_lane, weight, 1.0 / weight + coalesce(
        (SELECT max(fair_tag) FROM messages WHERE status = 'processing' AND lane = which_lane),
        (SELECT min(fair_tag) FROM messages WHERE status = 'queued' AND lane = which_lane),
        (SELECT max(last_tag) FROM user_shares WHERE lane = which_lane),
        0))
    ON CONFLICT (user_id, lane) DO UPDATE
       SET last_tag = greatest(s.last_tag + 1.0 / excluded.weight, excluded.last_tag), weight = excluded.weight
    RETURNING last_tag - 1.0 / weight
$$
"""


def upgrade() -> None:
    # A new value cannot be used in the transaction that adds it; nothing below uses it.
    op.execute("ALTER TYPE message_status ADD VALUE IF NOT EXISTS 'expired'")
    op.add_column("messages", sa.Column("user_id", sa.String(length=128), nullable=True))
    op.execute("UPDATE messages AS m SET user_id = c.user_id FROM conversations AS c WHERE c.id = m.conversation_id")
    op.alter_column("messages", "user_id", nullable=False)
    op.add_column("messages", sa.Column("lane", sa.SmallInteger(), server_default=sa.text("0"), nullable=False))
    op.add_column("messages", sa.Column("fair_tag", sa.Float(precision=53), nullable=True))
    op.add_column("messages", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE messages SET fair_tag = 0 WHERE status IN ('queued', 'processing')")
    op.create_check_constraint(op.f("ck_messages_lane"), "messages", "lane IN (0, 1)")
    op.create_index("ix_messages_ready", "messages", ["lane", "fair_tag"],
                    postgresql_where=sa.text("status = 'queued'"))
    op.create_index("ix_messages_running", "messages", ["lane", "fair_tag"],
                    postgresql_where=sa.text("status = 'processing'"))
    op.create_index("ix_messages_user_pending", "messages", ["user_id", "status"],
                    postgresql_where=sa.text("status IN ('queued', 'processing')"))
    op.create_index("ix_messages_expiring", "messages", ["expires_at"],
                    postgresql_where=sa.text("status = 'queued' AND expires_at IS NOT NULL"))
    op.create_index("ix_messages_batch_waiting", "messages", ["created_at"],
                    postgresql_where=sa.text("status = 'queued' AND lane = 1"))
    op.create_index("ix_conversations_leased", "conversations", ["lease_expires_at"],
                    postgresql_where=sa.text("lease_expires_at IS NOT NULL"))
    op.create_table(
        "user_shares",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("lane", sa.SmallInteger(), nullable=False),
        sa.Column("weight", sa.Float(precision=53), nullable=False),
        sa.Column("last_tag", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "lane", name=op.f("pk_user_shares")),
        sa.CheckConstraint("weight > 0", name=op.f("ck_user_shares_weight_positive")),
    )
    op.create_index("ix_user_shares_lane_tag", "user_shares", ["lane", "last_tag"])
    op.execute(NEXT_FAIR_TAG)


def downgrade() -> None:
    op.execute("DROP FUNCTION next_fair_tag(varchar, smallint, float8)")
    op.drop_index("ix_user_shares_lane_tag", table_name="user_shares")
    op.drop_table("user_shares")
    op.drop_index("ix_conversations_leased", table_name="conversations")
    for index in ("ix_messages_batch_waiting", "ix_messages_expiring", "ix_messages_user_pending",
                  "ix_messages_running", "ix_messages_ready"):
        op.drop_index(index, table_name="messages")
    op.drop_constraint(op.f("ck_messages_lane"), "messages", type_="check")
    for column in ("not_before", "expires_at", "fair_tag", "lane", "user_id"):
        op.drop_column("messages", column)
    # Postgres cannot drop an enum value; `expired` stays in message_status, unused.
