"""next_fair_tag() in PL/pgSQL: the same statement, its plan kept by the session.

A non-inlinable SQL-language function is parsed and planned again at every call of the statement
that calls it; PL/pgSQL keeps each statement's plan for the session. Every POST stores its message
through next_fair_tag() (migration 0006), and its re-planning was most of what fair share added to
Postgres's time per message (pgbench, the function alone in a transaction: 0.44 ms as SQL, 0.21 ms
as PL/pgSQL; bench/end_to_end.py has the whole message). Same arguments, same statement, same
result: `weight` in RETURNING is the row's (the SQL function's column-first rule), here said so.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEXT_FAIR_TAG = """
CREATE OR REPLACE FUNCTION next_fair_tag(who varchar, which_lane smallint, weight float8) RETURNS float8
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    tag float8;
BEGIN
    INSERT INTO user_shares AS s (user_id, lane, weight, last_tag)
    VALUES (who, which_lane, weight, 1.0 / weight + coalesce(
        (SELECT max(fair_tag) FROM messages WHERE status = 'processing' AND lane = which_lane),
        (SELECT min(fair_tag) FROM messages WHERE status = 'queued' AND lane = which_lane),
        (SELECT max(last_tag) FROM user_shares WHERE lane = which_lane),
        0))
    ON CONFLICT (user_id, lane) DO UPDATE
       SET last_tag = greatest(s.last_tag + 1.0 / excluded.weight, excluded.last_tag), weight = excluded.weight
    RETURNING s.last_tag - 1.0 / s.weight INTO tag;
    RETURN tag;
END
$$
"""

# Migration 0006's, as it was.
NEXT_FAIR_TAG_SQL = """
CREATE OR REPLACE FUNCTION next_fair_tag(who varchar, which_lane smallint, weight float8) RETURNS float8
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
    op.execute(NEXT_FAIR_TAG)


def downgrade() -> None:
    op.execute(NEXT_FAIR_TAG_SQL)
