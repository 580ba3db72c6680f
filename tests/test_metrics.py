"""Prometheus metrics: web's /metrics (all gunicorn workers, plus the queue depth) and the worker's
own endpoint (all pool processes)."""

from __future__ import annotations

import requests

from tests.support import Api, sample, wait_until


def test_web_metrics(stack, api: Api) -> None:
    before = requests.get(stack.url + "/metrics", timeout=10).text
    api.ask("Add task: measured")
    text = requests.get(stack.url + "/metrics", timeout=10).text

    def grew(**labels: str) -> float:  # this test's requests, not earlier tests'
        name = "chatq_http_request_duration_seconds_count"
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert grew(route="/api/v1/chat", method="POST", status="202") == 1
    assert grew(route="/api/v1/messages/<message_id>", method="GET", status="200") >= 1
    assert sample(text, "chatq_sql_round_trips_total", process="web", kind="statement") > 0
    assert 'chatq_messages{status="queued"}' in text and 'chatq_messages{status="processing"}' in text


def test_worker_metrics(stack, api: Api) -> None:
    url = f"http://127.0.0.1:{stack.worker.metrics_port}/metrics"
    before = wait_until(lambda: _scrape(url), timeout=15, what="worker metrics")
    api.ask("Add task: measured too")

    def counted() -> str | None:
        text = _scrape(url)
        return text if text and sample(text, "chatq_reply_latency_seconds_count") > sample(
            before, "chatq_reply_latency_seconds_count") else None

    text = wait_until(counted, timeout=15, what="this reply in the worker's metrics")
    for name in ("chatq_generation_seconds_count", "chatq_claims_total"):
        assert sample(text, name) - sample(before, name) >= 1, name
    assert sample(text, "chatq_queue_wait_seconds_count", lane="interactive", weight="1") > sample(
        before, "chatq_queue_wait_seconds_count", lane="interactive", weight="1")
    assert sample(text, "chatq_sql_round_trips_total", process="worker", kind="statement") > 0
    assert "chatq_duplicate_deliveries_total" in text and "chatq_failures_total" in text


def _scrape(url: str) -> str | None:
    try:
        return requests.get(url, timeout=5).text
    except requests.RequestException:
        return None
