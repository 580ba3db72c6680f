"""What the claim's history costs the worker to fetch: the driver's tuples (worker/claims.py) against
SQLAlchemy's Row objects, on one conversation of N messages, alternated in one run.

    .venv/bin/python bench/claim_fetch.py [--history 10000] [--repeats 30]

Each repeat runs the claim statement (claim_sql.CLAIM) in a transaction it rolls back, so every
call claims the same question with the same history, fetches its rows one way or the other and reads
every turn once, as an engine does; the figure is the process's CPU time for it. A fresh
`chatq_claimfetch` database beside DATABASE_URL's (or the embedded default's), dropped at the end.
Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from operator import attrgetter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

DATABASE = "chatq_claimfetch"


def seed(connection: Any, history: int) -> None:
    """One conversation: `history` answered messages (questions and replies in turn), then a question."""
    from sqlalchemy import text

    conversation = uuid.uuid4()
    connection.execute(text("INSERT INTO conversations (id, user_id, title, last_seq, lease_version) "
                            "VALUES (:c, 'bench', 'bench', :last, 0)"), {"c": conversation, "last": history + 1})
    connection.execute(text(
        "INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts, created_at, "
        "updated_at, lane, fair_tag, superseded) "
        "SELECT gen_random_uuid(), :c, 'bench', s, CASE WHEN s % 2 = 1 THEN 'user' ELSE 'assistant' END::message_role, "
        "'message number ' || s || ' with a few words in it', "
        "CASE WHEN s % 2 = 1 THEN 'answered'::message_status END, 1, now(), now(), 0, "
        "CASE WHEN s % 2 = 1 THEN s END, false FROM generate_series(1, :n) s "
        "UNION ALL SELECT gen_random_uuid(), :c, 'bench', :n + 1, 'user', 'the question', 'queued', 0, now(), "
        "now(), 0, :n + 1, false"), {"c": conversation, "n": history})
    connection.execute(text("ANALYZE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import psycopg
    from sqlalchemy import create_engine

    from scripts import devstack
    from worker import claim_sql, claims
    from worker.engine import History

    base = devstack.environment()
    engine = create_engine(devstack.create_database(base["DATABASE_URL"], DATABASE))

    def driver_tuples(result: Any) -> tuple[Any, Any, History]:
        return claims._claimed(result)

    def row_objects(result: Any) -> tuple[Any, Any, History]:
        rows = sorted(result.all(), key=attrgetter("seq"))
        return rows[0].claim, rows[0].content, History(rows[1:])

    fetches = {"driver tuples": driver_tuples, "Row objects": row_objects}
    spent: dict[str, list[float]] = {name: [] for name in fetches}
    try:
        with engine.begin() as connection:
            seed(connection, args.history)
        for _ in range(args.repeats):
            for name, fetch in fetches.items():
                with engine.connect() as connection:
                    transaction = connection.begin()
                    started = time.process_time()
                    claimed, _content, history = fetch(connection.execute(claim_sql.CLAIM[False],
                                                                          {"lease": 6.0, "max_generations": 0}))
                    for _turn in history:
                        pass
                    spent[name].append((time.process_time() - started) * 1000)
                    transaction.rollback()
                assert claimed is not None and len(history) == args.history
    finally:
        engine.dispose()
        with psycopg.connect(devstack.libpq_url(base["DATABASE_URL"]), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    medians = {name: statistics.median(values) for name, values in spent.items()}
    for name, median in medians.items():
        print(f"{name}: median {median:.1f} ms of CPU to claim with a {args.history:,}-message history")
    print(f"Row objects / driver tuples: {medians['Row objects'] / medians['driver tuples']:.2f}x")


if __name__ == "__main__":
    main()
