"""The SQL of claiming and answering, each step one statement (one round trip, atomic on its own,
run in autocommit). Kept together so the locking order is visible: the conversation row first,
then message rows — the same order the web front takes when it numbers a new message."""

from sqlalchemy import TextClause, text

from models.outbox import outbox_ctes


def _statement(*parts: str) -> TextClause:
    """A statement built from the constant fragments below (never from data: values are bound)."""
    return text("".join(parts))


# What a claimed conversation's earliest unanswered message and its history look like, as rows of
# (seq, role, content, tool_calls, claim): first the claim (seq 0, which no message has: the
# question's content, and in `claim` a json object of the lease and the question's details), then
# one row per message of the history. Rows rather than one aggregated json value, which Postgres
# must build and the worker decode whole, while rows stream out as stored; the claim's details
# travel in one column so that the history's rows stay narrow. They come in no promised order: the
# worker sorts them by seq, cheaper in Python on nearly sorted ints than ORDER BY in Postgres. Tool
# calls come as their json text, decoded only when an engine reads them. (Figures: BENCHMARKS.md.)
# Appended to a statement that defines the CTE `claimed` (id, user_id, lease_version, last_seq).
# The question is taken only while it is still `queued`: a cancel or an expiry committed since the
# statement began leaves it alone (and the claim then holds a lease with nothing picked).
_PICK = """
, question AS (
    SELECT m.id FROM messages AS m JOIN claimed ON m.conversation_id = claimed.id
     WHERE m.status IN ('queued', 'processing')
     ORDER BY m.seq LIMIT 1
), picked AS (
    UPDATE messages AS m SET status = 'processing', attempts = m.attempts + 1, not_before = NULL, updated_at = now()
      FROM question WHERE m.id = question.id AND m.status = 'queued'
 RETURNING m.id, m.seq, m.content, m.attempts, m.request_id, m.error, m.lane, m.fair_tag,
           extract(epoch FROM now() - m.created_at)::float8 AS age
)
SELECT 0 AS seq, 'user' AS role, picked.content, NULL::text AS tool_calls,
       json_build_object(
           'conversation_id', claimed.id, 'user_id', claimed.user_id, 'lease_version', claimed.lease_version,
           'last_seq', claimed.last_seq, 'question_id', picked.id, 'seq', picked.seq, 'attempts', picked.attempts,
           'request_id', picked.request_id, 'age', picked.age, 'last_error', picked.error, 'lane', picked.lane,
           'weight', (SELECT s.weight FROM user_shares AS s WHERE s.user_id = claimed.user_id AND s.lane = picked.lane),
           'pending', (SELECT count(*) FROM messages AS p
                        WHERE p.conversation_id = claimed.id AND p.status IN ('queued', 'processing'))
       ) AS claim
  FROM claimed LEFT JOIN picked ON true
UNION ALL
SELECT h.seq, h.role::text, h.content, h.tool_calls::text, NULL
  FROM claimed JOIN picked ON true JOIN messages AS h ON h.conversation_id = claimed.id
 WHERE (h.seq < picked.seq OR h.role = 'assistant') AND NOT h.superseded
"""

# The scheduler (docs/scheduler.md): the queued messages that may start now, in the order
# they should — interactive before batch, then by virtual start time (each user's messages tagged
# 1/weight apart from their user's last: next_fair_tag(), migration 0006), so that every user with
# waiting work gets an equal share of starts (weighted by tier), however many conversations they
# have waiting. A message may start when it is its conversation's earliest unanswered one, its
# conversation has no live lease, its backoff is over and it has not expired. The walk follows
# ix_messages_ready and stops at the first such message: it passes over only messages of busy
# conversations (at most the running generations' conversations' backlogs), not the queue.
_READY = """
    SELECT c.id FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
     WHERE m.status = 'queued'
       AND (m.not_before IS NULL OR m.not_before <= now())
       AND (m.expires_at IS NULL OR m.expires_at > now())
       AND (c.lease_expires_at IS NULL OR c.lease_expires_at < now())
       AND NOT EXISTS (SELECT 1 FROM messages AS e
                        WHERE e.conversation_id = m.conversation_id AND e.status IN ('queued', 'processing')
                          AND e.seq < m.seq)
"""
# MAX_GENERATIONS_PER_USER: a user already generating that many is passed over (an index count
# of their running messages; two claims at the same instant may each see one slot left).
_UNDER_USER_CAP = """
       AND (SELECT count(*) FROM messages AS r WHERE r.user_id = m.user_id AND r.status = 'processing')
           < :max_generations
"""
_FAIR_ORDER = """
     ORDER BY m.lane, m.fair_tag
"""


def _claim_fairest(capped: bool) -> TextClause:
    """Take the lease of the conversation of the message that should start next (skipping
    conversations another claim is taking at this instant) and that message, with its history."""
    return _statement("WITH candidate AS (", _READY, _UNDER_USER_CAP if capped else "", _FAIR_ORDER, """
     LIMIT 1
       FOR UPDATE OF c SKIP LOCKED
), claimed AS (
    UPDATE conversations AS c
       SET lease_version = c.lease_version + 1, lease_expires_at = now() + make_interval(secs => :lease)
      FROM candidate WHERE c.id = candidate.id
 RETURNING c.id, c.user_id, c.lease_version, c.last_seq
)""", _PICK)


# Without, and with, a cap on each user's generations at once.
CLAIM = {capped: _claim_fairest(capped) for capped in (False, True)}

# How many messages could start now (counted up to :most): the sweeper rings that many doorbells,
# less the jobs already waiting in the broker.
READY_COUNT = _statement("SELECT count(*) FROM (", _READY, " LIMIT :most) AS ready")

# The same, for the next message of a conversation whose lease we already hold.
PICK = _statement("""
WITH claimed AS (
    SELECT id, user_id, lease_version, last_seq FROM conversations
     WHERE id = :conversation_id AND lease_version = :version

)""", _PICK)

# Store the reply and settle its question — only while our fencing token is current, in one
# statement. The question's row decides, under its lock: `processing` becomes `answered`; a question
# the user stopped meanwhile (`cancelling`) becomes `cancelled` with the text written so far stored
# as its reply, finish "cancelled" (none at all when there is none), and its webhook event;
# anything else (put back in the queue by a regenerate) stores nothing. A concurrent cancel either
# commits first (and this sees `cancelling`) or waits for this and finds the question answered:
# exactly one of the two. (`cancelled` is taken like `cancelling`: a web node of the release
# before wrote it for a question being generated, during a rolling deploy.) The lease is released
# in every case, and the tokens the generation used are added to the user's day (daily_usage),
# stored or not. A second current reply to one question violates uq_messages_current_reply and
# rolls the statement back whole.
COMMIT_REPLY = _statement("""
WITH lease AS (
    SELECT id, user_id FROM conversations WHERE id = :conversation_id AND lease_version = :version FOR UPDATE
), used AS (
    INSERT INTO daily_usage AS u (user_id, day, prompt_tokens, completion_tokens)
    SELECT lease.user_id, (now() AT TIME ZONE 'UTC')::date, :prompt_tokens, :completion_tokens FROM lease
     WHERE :prompt_tokens + :completion_tokens > 0
    ON CONFLICT (user_id, day) DO UPDATE SET prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
                                             completion_tokens = u.completion_tokens + excluded.completion_tokens
), question AS (
    UPDATE messages
       SET status = CASE WHEN status = 'processing' THEN 'answered' ELSE 'cancelled' END::message_status,
           error = NULL, updated_at = now()
     WHERE id = :question_id AND status IN ('processing', 'cancelling', 'cancelled') AND EXISTS (SELECT 1 FROM lease)
 RETURNING status::text AS status, extract(epoch FROM now() - created_at)::float8 AS latency,
           seq, content, created_at
), kept AS (
    SELECT status FROM question WHERE status = 'answered' OR :content <> ''
), fenced AS (
    UPDATE conversations
       SET last_seq = last_seq + (SELECT count(*) FROM kept), lease_expires_at = NULL, updated_at = now()
     WHERE id = :conversation_id AND lease_version = :version
 RETURNING last_seq
), reply AS (
    INSERT INTO messages (id, conversation_id, user_id, seq, role, content, reply_to_id, tool_calls, context_seq,
                          request_id, attempts, question_content, finish, usage, context, model, created_at,
                          updated_at)
    SELECT :reply_id, :conversation_id, lease.user_id, fenced.last_seq, 'assistant', :content, :question_id,
           CAST(:tool_calls AS json), :context_seq, :request_id, 0, :question_content,
           CAST(CASE kept.status WHEN 'cancelled' THEN 'cancelled' ELSE :finish END AS reply_finish),
           CAST(:usage AS json), CAST(:context AS json), :model, now(), now()
      FROM lease, fenced, kept
 RETURNING seq, created_at
)""", outbox_ctes("""
    SELECT lease.user_id, CAST(:question_id AS uuid) AS question_id,
           CASE WHEN EXISTS (SELECT 1 FROM kept) THEN CAST(:reply_id AS uuid) END AS reply_id,
           question.status, NULL::text AS error
      FROM lease, question
"""), """
SELECT question.status, question.latency, reply.seq,
       question.seq AS question_seq, question.content AS question_content, question.created_at AS question_created_at,
       reply.created_at AS reply_created_at
  FROM lease LEFT JOIN question ON true LEFT JOIN reply ON true
""")

# Give a message up (too many attempts, too old): failed, with a reason a person can read, and its
# webhook event.
GIVE_UP = _statement("""
WITH given_up AS (
    UPDATE messages SET status = 'failed', error = :error, updated_at = now() WHERE id = :question_id
 RETURNING id, conversation_id
)""", outbox_ctes("""
    SELECT c.user_id, g.id AS question_id, NULL::uuid AS reply_id, 'failed'::text AS status,
           CAST(:error AS text) AS error
      FROM given_up AS g JOIN conversations AS c ON c.id = g.conversation_id
"""), """
SELECT count(*) FROM given_up
""")

# Give the question back (queued again, to be tried after its backoff, or failed with an error) and
# release the lease, if ours. It keeps its place in the queue (its tag). A question the user stopped
# meanwhile (`cancelling`) becomes `cancelled` — nothing was written that is worth keeping — with
# its webhook event; one put back by a regenerate is left as it is.
GIVE_BACK = _statement("""
WITH fenced AS (
    UPDATE conversations SET lease_expires_at = NULL
     WHERE id = :conversation_id AND lease_version = :version RETURNING id, user_id
), given_back AS (
    UPDATE messages
       SET status = CASE WHEN status = 'processing' THEN CAST(:status AS message_status) ELSE 'cancelled' END,
           error = CASE WHEN status = 'processing' THEN :error END, enqueued_at = now(),
           not_before = now() + make_interval(secs => :retry_in), updated_at = now()
     WHERE id = :question_id AND status IN ('processing', 'cancelling', 'cancelled') AND EXISTS (SELECT 1 FROM fenced)
    RETURNING id, status::text AS status
)""", outbox_ctes("""
    SELECT fenced.user_id, given_back.id AS question_id, NULL::uuid AS reply_id, given_back.status,
           CASE WHEN given_back.status = 'failed' THEN CAST(:error AS text) END AS error
      FROM fenced, given_back WHERE given_back.status IN ('failed', 'cancelled')
"""), """
SELECT fenced.id, given_back.status AS given_back FROM fenced LEFT JOIN given_back ON true
""")

RELEASE = text("""
UPDATE conversations SET lease_expires_at = NULL WHERE id = :conversation_id AND lease_version = :version
""")

# Renew a lease still held (a released one stays released: a renewal racing the commit must not
# hold the conversation up), and read whether the question was cancelled meanwhile.
RENEW = text("""
UPDATE conversations SET lease_expires_at = now() + make_interval(secs => :lease)
 WHERE id = :conversation_id AND lease_version = :version AND lease_expires_at IS NOT NULL
RETURNING (SELECT status::text FROM messages WHERE id = :question_id) AS status
""")

# Whether the question is still wanted (a cancel notification is only a hint: Postgres decides).
QUESTION_STATUS = text("SELECT status::text FROM messages WHERE id = :question_id")

# After a reply: the conversation's earliest unanswered message, marked as enqueued now.
NEXT_PENDING = text("""
UPDATE messages SET enqueued_at = now()
 WHERE id = (SELECT id FROM messages WHERE conversation_id = :conversation_id AND status IN ('queued', 'processing')
              ORDER BY seq LIMIT 1)
RETURNING id
""")

# The sweeper's. Leases that ran out: their workers are presumed dead. Each is taken away (the
# fencing token moves on, so a worker that was only slow cannot commit), and its question is queued
# again with its place in the queue (the next claim counts another attempt) — or, if the user had
# stopped it, `cancelled` (what was written died with the worker), with its webhook event.
REVOKE_EXPIRED_LEASES = _statement("""
WITH expired AS (
    UPDATE conversations AS c SET lease_version = c.lease_version + 1, lease_expires_at = NULL
     WHERE c.id IN (SELECT id FROM conversations WHERE lease_expires_at < now()
                     ORDER BY lease_expires_at LIMIT :most FOR UPDATE SKIP LOCKED)
 RETURNING c.id, c.user_id
), settled AS (
    UPDATE messages AS m
       SET status = CASE WHEN m.status = 'processing' THEN 'queued' ELSE 'cancelled' END::message_status,
           updated_at = now()
      FROM expired WHERE m.conversation_id = expired.id AND m.status IN ('processing', 'cancelling')
    RETURNING m.id, m.conversation_id, m.status::text AS status, expired.user_id
)""", outbox_ctes("""
    SELECT s.user_id, s.id AS question_id, NULL::uuid AS reply_id, s.status, NULL::text AS error
      FROM settled AS s WHERE s.status = 'cancelled'
"""), """
SELECT id, conversation_id, status FROM settled
""")

# Messages not started before their `expires_in` ran out: `expired`, never generated, with their
# webhook events; their conversations move on to the next message.
EXPIRE = _statement("""
WITH expired AS (
    UPDATE messages AS m SET status = 'expired', error = :error, updated_at = now()
     WHERE m.id IN (SELECT id FROM messages WHERE status = 'queued' AND expires_at <= now()
                     ORDER BY expires_at LIMIT :most FOR UPDATE SKIP LOCKED)
 RETURNING m.id, m.conversation_id, m.user_id
)""", outbox_ctes("""
    SELECT e.user_id, e.id AS question_id, NULL::uuid AS reply_id, 'expired'::text AS status,
           CAST(:error AS text) AS error
      FROM expired AS e
"""), """
SELECT id, conversation_id FROM expired
""")

# Batch messages that have waited BATCH_AGE_SECONDS join the interactive lane, each as a new
# arrival of its user there: never starved for good, never ahead of users already waiting.
PROMOTE_AGED_BATCH = text("""
UPDATE messages AS m
   SET lane = 0, fair_tag = next_fair_tag(m.user_id, CAST(0 AS smallint), coalesce(
           (SELECT s.weight FROM user_shares AS s WHERE s.user_id = m.user_id AND s.lane = 1), 1.0))
 WHERE m.id IN (SELECT id FROM messages WHERE status = 'queued' AND lane = 1
                   AND created_at < now() - make_interval(secs => :age)
                 ORDER BY created_at LIMIT :most FOR UPDATE SKIP LOCKED)
RETURNING m.id
""")
