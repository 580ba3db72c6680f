"""Where the CPU goes during a benchmark: CPU time (user + system) of this machine's processes,
by the part of the system each one is, read from the kernel's accounts (psutil) before and after
a run. Everything here shares the machine's cores, so a part's CPU per message is what it takes
from everything else.

Processes are recognised by their command lines; run the benchmark on a machine where no other
chatq, Celery, gunicorn, Postgres or Redis is busy, or their work is counted too. A process that
exits during the run takes its CPU time with it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping

import psutil

PARTS = (  # (what the command line contains, part), first match wins
    ("gunicorn", "web"),
    ("nginx", "nginx"),
    ("postgres", "postgres"),
    ("redis-server", "redis"),
)


def _part(pid: int, commands: Mapping[int, str], parents: Mapping[int, int]) -> str | None:
    if pid == os.getpid():
        return "load generator"
    command = commands.get(pid, "")
    if "celery" in command:
        # A prefork worker: the main process consumes from the broker and hands jobs to its
        # children (the pool), which run them.
        return "worker pool" if "celery" in commands.get(parents.get(pid, 0), "") else "worker consumer"
    return next((part for needle, part in PARTS if needle in command), None)


def cpu_seconds() -> Counter[str]:
    """CPU seconds used so far, by part, over every process now running."""
    commands: dict[int, str] = {}
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for process in psutil.process_iter(["pid", "ppid", "name", "cmdline", "cpu_times"]):
        info = process.info
        if info["cpu_times"] is None:
            continue
        commands[info["pid"]] = " ".join(info["cmdline"] or [info["name"] or ""])
        parents[info["pid"]] = info["ppid"]
        times[info["pid"]] = info["cpu_times"].user + info["cpu_times"].system
    used: Counter[str] = Counter()
    for pid, seconds in times.items():
        part = _part(pid, commands, parents)
        if part is not None:
            used[part] += seconds
    return used


def per_message_ms(before: Counter[str], after: Counter[str], messages: int) -> dict[str, float]:
    """CPU milliseconds per message, by part, between two readings (and their total)."""
    if not messages:
        return {}
    spent = {part: (after[part] - before[part]) * 1000 / messages for part in sorted(after)
             if after[part] > before[part]}
    return {**spent, "total": sum(spent.values())}


def describe_cpu(spent: Mapping[str, float]) -> str:
    return ", ".join(f"{part} {ms:.2f}" for part, ms in spent.items())
