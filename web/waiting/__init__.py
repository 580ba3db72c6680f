"""Waiting requests: a client that waits for a change — a long-poll (`?wait=`) or an event stream
— without a thread or a database connection while it sleeps. Read in this order:

- admission.py: how many waiting requests this process holds, in all and per user (503 / 429 past them);
- wakeups.py: the process's one Redis pub/sub listener, which wakes the requests a change concerns;
- longpoll.py: `wait_for`, the loop of a long-poll (read Postgres, sleep until woken, read again);
- stream.py: the Server-Sent Events blueprint, a waiting request that keeps its own cursor.
"""
