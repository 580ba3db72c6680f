"""user_writable() and may_queue(): a write never slips past an erasure, and the queue cap is exact

Two rules that a plain statement cannot hold, because its snapshot is taken before it waits for a
lock: a write that commits while the user's erasure runs (its 202 then undone by the erasure), and
concurrent POSTs that each count the user's queue before the others committed (104 queued against
a cap of 100). A PL/pgSQL function that is VOLATILE takes a fresh snapshot for each query inside
it, so a query run after a lock sees everything committed by whoever held the lock before.

- `user_writable(who)`: takes the user's erasure lock shared (DELETE /me takes it exclusive while
  it records the erasure), then says whether no erasure of the user is running. A write that gets
  true commits before the erasure is recorded (so the erasure finds and deletes it), or is refused.
- `may_queue(who, cap)`: `user_writable(who)` and, with a cap, the user's queue lock (exclusive,
  held to the commit: one user's POSTs take turns there, other users never wait) and fewer than
  `cap` messages queued.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 19:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Advisory-lock namespaces (the key is hashtext of the user): 7362203 "the user's erasure is being
# recorded" (models/sql/erasure.py LOCK_OUT_WRITES), 7362204 "the user's queue is being counted".
USER_WRITABLE = """
CREATE FUNCTION user_writable(who varchar) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7362203, hashtext(who));
    RETURN NOT EXISTS (SELECT 1 FROM erasures WHERE user_id = who AND finished_at IS NULL);
END
$$
"""

MAY_QUEUE = """
CREATE FUNCTION may_queue(who varchar, cap integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT user_writable(who) THEN
        RETURN false;
    END IF;
    IF cap <= 0 THEN
        RETURN true;
    END IF;
    PERFORM pg_advisory_xact_lock(7362204, hashtext(who));
    -- The cap-th queued message, found in ix_messages_user_pending: at most `cap` entries read.
    RETURN NOT EXISTS (SELECT 1 FROM messages WHERE user_id = who AND status = 'queued' OFFSET cap - 1 LIMIT 1);
END
$$
"""


def upgrade() -> None:
    op.execute(USER_WRITABLE)
    op.execute(MAY_QUEUE)


def downgrade() -> None:
    op.execute("DROP FUNCTION may_queue(varchar, integer)")
    op.execute("DROP FUNCTION user_writable(varchar)")
