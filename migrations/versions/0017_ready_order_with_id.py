"""ix_messages_ready orders ties: (lane, fair_tag, created_at, id), the claim's and the count's.

Messages of users who join at the same virtual time share a tag (next_fair_tag(), migration 0006):
the claim took one of them in the index's physical order while a queued message's `ahead` counted
only the messages strictly before its tag, so a message tied with the head of the queue said
"0 ahead" and one or more started before it. Ties now go first come, first served (created_at),
then by id, a total order that the claim and the count both follow (worker/claim_sql.py,
models/sql/queries.py ready_order).

Built CONCURRENTLY: on a busy messages table a plain CREATE INDEX would hold every POST for the
time it takes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 01:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ready_index(columns: str) -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_messages_ready_new")
        op.execute(f"CREATE INDEX CONCURRENTLY ix_messages_ready_new ON messages ({columns}) "
                   "WHERE status = 'queued'")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_messages_ready")
        op.execute("ALTER INDEX ix_messages_ready_new RENAME TO ix_messages_ready")


def upgrade() -> None:
    _ready_index("lane, fair_tag, created_at, id")


def downgrade() -> None:
    _ready_index("lane, fair_tag")
