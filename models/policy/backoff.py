"""How chatq waits before trying again, everywhere it does: exponential backoff with full jitter.

Many messages failing together (a model server down, a Redis restart) must not come back
together: each retry waits a random time between 0 and base x 2^attempt, capped. Used by the worker
for a generation given back to the queue, by Celery's automatic retries of a job that met an
outage (`retry_backoff`, `retry_backoff_max`, `retry_jitter` are this same policy), and by the
model client between two requests of one step.
"""

from __future__ import annotations

import random

BASE_SECONDS = 1.0
CAP_SECONDS = 30.0


def full_jitter(attempt: int, *, base: float = BASE_SECONDS, cap: float = CAP_SECONDS) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 0)."""
    return random.uniform(0, min(cap, base * 2**attempt))
