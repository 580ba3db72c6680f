"""Fair share inside a user: the end users an app names (`safety_identifier` on /v1) share their
user's part of the workers the way users share the service.

A user's queued messages keep the places their user was given (their `fair_tag`s: the user's
share against everyone else's, unchanged, so an app gains nothing by naming more end users); which
of the user's messages takes which place is decided by a second start-time fair queue, among the
user's end users (`end_user_tag`, from `end_user_shares`, as next_fair_tag() does for users).
`place_for_end_user()` gives a message its end user's tag and hands the user's places out again
in that order: at most MAX_QUEUED_PER_USER rows, found in ix_messages_user_pending, and run only
for a message that names an end user (the plain POST's statement is unchanged).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLACE_FOR_END_USER = """
CREATE FUNCTION place_for_end_user(question uuid, whom varchar) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who varchar;
    which_lane smallint;
    tag float8;
BEGIN
    SELECT user_id, lane INTO who, which_lane FROM messages WHERE id = question AND status = 'queued';
    IF who IS NULL THEN
        RETURN;  -- started or stopped already: its place no longer matters
    END IF;
    -- The end user's virtual start time within the user: the newest one running, else the oldest
    -- one waiting, else the latest handed out (as next_fair_tag() does among users).
    INSERT INTO end_user_shares AS s (user_id, end_user, lane, last_tag)
    VALUES (who, whom, which_lane, 1.0 + coalesce(
        (SELECT max(end_user_tag) FROM messages WHERE user_id = who AND status = 'processing' AND lane = which_lane),
        (SELECT min(end_user_tag) FROM messages WHERE user_id = who AND status = 'queued' AND lane = which_lane),
        (SELECT max(last_tag) FROM end_user_shares WHERE user_id = who AND lane = which_lane),
        0))
    ON CONFLICT (user_id, end_user, lane) DO UPDATE SET last_tag = greatest(s.last_tag + 1.0, excluded.last_tag)
    RETURNING last_tag - 1.0 INTO tag;
    UPDATE messages SET end_user = whom, end_user_tag = tag WHERE id = question;
    -- The user's places, handed out again: the n-th earliest place to the n-th in the end users'
    -- order (messages that name no end user first, as they came).
    WITH mine AS (
        SELECT id, fair_tag, end_user_tag FROM messages
         WHERE user_id = who AND status = 'queued' AND lane = which_lane
    ), places AS (
        SELECT fair_tag, row_number() OVER (ORDER BY fair_tag) AS n FROM mine
    ), turns AS (
        SELECT id, row_number() OVER (ORDER BY end_user_tag NULLS FIRST, fair_tag) AS n FROM mine
    )
    UPDATE messages AS m SET fair_tag = places.fair_tag
      FROM turns JOIN places USING (n)
     WHERE m.id = turns.id AND m.fair_tag IS DISTINCT FROM places.fair_tag;
END
$$
"""


def upgrade() -> None:
    op.add_column("messages", sa.Column("end_user", sa.String(length=128), nullable=True))
    op.add_column("messages", sa.Column("end_user_tag", sa.Float(precision=53), nullable=True))
    op.create_table(
        "end_user_shares",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("end_user", sa.String(length=128), nullable=False),
        sa.Column("lane", sa.SmallInteger(), nullable=False),
        sa.Column("last_tag", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "end_user", "lane", name=op.f("pk_end_user_shares")),
    )
    op.execute(PLACE_FOR_END_USER)


def downgrade() -> None:
    op.execute("DROP FUNCTION place_for_end_user(uuid, varchar)")
    op.drop_table("end_user_shares")
    op.drop_column("messages", "end_user_tag")
    op.drop_column("messages", "end_user")
