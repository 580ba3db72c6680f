"""Prometheus metrics of the worker. Served by the worker's main process on WORKER_METRICS_PORT,
added up over its pool processes (see worker/celery_app.py for the set-up order)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from models.sql.round_trips import counter_for

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

QUEUE_WAIT = Histogram("chatq_queue_wait_seconds", "From a message's acceptance to its claim by a worker, "
                       "by the scheduler's lane and the user's weight (the tier's, TIER_WEIGHTS).",
                       ["lane", "weight"], buckets=LATENCY_BUCKETS)
GENERATION = Histogram("chatq_generation_seconds", "Time the reply engine took.", buckets=LATENCY_BUCKETS)
REPLY_LATENCY = Histogram("chatq_reply_latency_seconds", "From a message's acceptance to its reply's commit.",
                          buckets=LATENCY_BUCKETS)
CLAIMS = Counter("chatq_claims_total", "Messages claimed for answering (each an attempt).")
LEASE_LOST = Counter("chatq_lease_lost_total", "Replies discarded because their lease had been taken over.")
REQUEUED = Counter("chatq_sweeper_requeued_total", "Jobs the sweeper sent: doorbells for messages that "
                   "could start with no job waiting, and generations whose lease ran out.", ["reason"])
DUPLICATES = Counter("chatq_duplicate_deliveries_total", "Jobs that found nothing to do.", ["reason"])
DEFERRED = Counter("chatq_jobs_deferred_total", "Jobs put back in the queue before claiming anything.", ["reason"])
EXPIRED = Counter("chatq_messages_expired_total", "Messages that were not started before their expires_in.")
PROMOTED = Counter("chatq_batch_promoted_total", "Batch messages that waited long enough to join the "
                   "interactive lane.")
FAILURES = Counter("chatq_failures_total", "Messages that became failed.", ["reason"])
TOKENS = Counter("chatq_llm_tokens_total", "Model tokens used, as the model server reported them.",
                 ["model", "kind"])
CANCELLED = Counter("chatq_generations_cancelled_total",
                    "Generations stopped because their question was cancelled (not failures).")
RETRIES = Counter("chatq_generation_retries_total", "Generations given back to the queue to try again.")
FORGOTTEN = Counter("chatq_forgotten_total", "Rows deleted by retention (conversations, with their messages) "
                    "and by erasures (every kind of a user's rows).", ["reason", "kind"])
ERASURES = Counter("chatq_erasures_total", "Users erased (DELETE /me carried out to its end).")
# The pool of model servers (worker/engine/pool.py), by server (its key: a hash of its URL and
# model, as /health lists them; never a URL, which may carry credentials).
LLM_SLOTS_IN_USE = Gauge("chatq_llm_slots_in_use", "Slots this worker holds on each model server now.", ["server"],
                         multiprocess_mode="livesum")
LLM_SLOT_WAIT = Histogram("chatq_llm_slot_wait_seconds", "How long a request waited for a slot on a model server.",
                          ["server"], buckets=LATENCY_BUCKETS)
LLM_FAILURES = Counter("chatq_llm_server_failures_total", "Requests a model server failed (connection, timeout, "
                       "5xx).", ["server", "kind"])
LLM_COOLDOWNS = Counter("chatq_llm_server_cooldowns_total", "Cooldowns a model server was put in.", ["server"])
LLM_FIRST_TOKEN = Histogram("chatq_llm_first_token_seconds", "From a streamed request's sending to its first "
                            "token.", ["server"], buckets=LATENCY_BUCKETS)
LLM_TOKENS_PER_SECOND = Histogram("chatq_llm_tokens_per_second", "A request's completion tokens over its duration.",
                                  ["server"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
count_round_trip = counter_for("worker")

# Every labelled series exists from the start, at zero, so dashboards and alerts see them.
DUPLICATES.labels("nothing_ready")
DEFERRED.labels("no_model_slot")
for _reason in ("gave_up", "permanent", "crashed"):
    FAILURES.labels(_reason)
FORGOTTEN.labels("retention", "conversations")
for _reason in ("lease_expired", "no_job_waiting"):
    REQUEUED.labels(_reason)
