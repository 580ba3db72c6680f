"""Counting what happened to every message a fault test sent: the figures each scenario prints."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

from tests.support import ARTIFACTS


@dataclass
class Figures:
    scenario: str
    sent: int
    accepted: int
    answered: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    reattempted: int = 0  # claimed more than once: a kill or an outage interrupted it
    extra: str = ""
    errors: list[str] = field(default_factory=list)  # why each failed message failed, as its row says

    def line(self) -> str:
        why = f" errors={self.errors}" if self.errors else ""
        return (f"{self.scenario}: sent={self.sent} accepted={self.accepted} answered={self.answered} "
                f"failed={self.failed} lost={self.lost} duplicate_replies={self.duplicates} "
                f"out_of_order={self.out_of_order} reattempted={self.reattempted} {self.extra}").rstrip() + why

    def report(self) -> Figures:
        print(self.line())
        ARTIFACTS.mkdir(exist_ok=True)
        with (ARTIFACTS / "fault-figures.txt").open("a") as figures:
            figures.write(self.line() + "\n")
        return self

    def assert_clean(self) -> None:
        assert (self.lost, self.duplicates, self.out_of_order, self.failed) == (0, 0, 0, 0), self.line()
        assert self.answered == self.accepted, self.line()


ROWS = """
SELECT q.id::text, q.conversation_id::text, q.seq, q.status::text, q.error,
       q.attempts, count(r.id) AS replies, min(r.seq) AS reply_seq, min(r.context_seq) AS context_seq
FROM messages q LEFT JOIN messages r ON r.reply_to_id = q.id
WHERE q.id = ANY(%s::uuid[])
GROUP BY q.id
"""


def wait_terminal(connect, ids: list[str], timeout: float = 120) -> None:
    """Wait until every accepted message is answered or failed (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with connect() as connection:
                pending = connection.execute(
                    "SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[]) AND status IN ('queued', 'processing')",
                    (ids,),
                ).fetchone()[0]
            if pending == 0:
                return
        except psycopg.OperationalError:
            pass
        time.sleep(0.25)


def audit(connection: psycopg.Connection, scenario: str, sent: int, ids: list[str]) -> Figures:
    figures = Figures(scenario, sent=sent, accepted=len(ids))
    rows = connection.execute(ROWS, (ids,)).fetchall()
    figures.lost = len(ids) - len(rows)
    by_conversation: dict[str, list[tuple]] = defaultdict(list)
    for _id, conversation, seq, status, error, attempts, replies, reply_seq, context_seq in rows:
        figures.reattempted += attempts > 1
        if status == "answered" and replies == 1:
            figures.answered += 1
        elif status == "failed":
            figures.failed += 1
            figures.errors.append(f"{_id}: {error}")
        elif replies == 0:
            figures.lost += 1
        figures.duplicates += max(0, replies - 1)
        if reply_seq is not None:
            by_conversation[conversation].append((seq, reply_seq, context_seq))
    for answers in by_conversation.values():
        answers.sort()
        previous_reply = 0
        for seq, reply_seq, context_seq in answers:
            # In order, one at a time: each reply comes after its question and after the reply
            # before it, and was generated from a history that already held that earlier reply.
            if reply_seq <= seq or reply_seq <= previous_reply or context_seq < previous_reply:
                figures.out_of_order += 1
            previous_reply = reply_seq
    return figures


def reply_latency(connection: psycopg.Connection, ids: list[str]) -> str:
    """Accepted -> reply committed, p50 / p99 / max over the answered messages: for the figures."""
    seconds = sorted(row[0] for row in connection.execute(
        "SELECT extract(epoch FROM r.created_at - q.created_at)::float8 FROM messages q "
        "JOIN messages r ON r.reply_to_id = q.id AND NOT r.superseded WHERE q.id = ANY(%s::uuid[])", (ids,)))
    if not seconds:
        return "reply_latency=none"
    return (f"reply_latency_p50={seconds[len(seconds) // 2]:.1f}s p99={seconds[int(len(seconds) * 0.99)]:.1f}s "
            f"max={seconds[-1]:.1f}s")
