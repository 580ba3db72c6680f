"""Prometheus metrics: web's /metrics (all gunicorn workers, plus the queue depth) and the worker's
own endpoint (all pool processes)."""

from __future__ import annotations

import requests

from tests.support import Api, sample, wait_until


def test_web_metrics(stack, api: Api) -> None:
    api.ask("Add task: measured")
    text = requests.get(stack.url + "/metrics", timeout=10).text
    assert sample(text, "chatq_http_request_duration_seconds_count", route="/api/v1/chat", method="POST",
                  status="202") >= 1
    assert sample(text, "chatq_http_request_duration_seconds_count", route="/api/v1/messages/<message_id>",
                  method="GET", status="200") >= 1
    assert sample(text, "chatq_sql_round_trips_total", process="web", kind="statement") > 0
    assert 'chatq_messages{status="queued"}' in text and 'chatq_messages{status="processing"}' in text


def test_worker_metrics(stack, api: Api) -> None:
    api.ask("Add task: measured too")
    url = f"http://127.0.0.1:{stack.worker.metrics_port}/metrics"

    def scraped() -> str | None:
        try:
            text = requests.get(url, timeout=5).text
        except requests.RequestException:
            return None
        return text if sample(text, "chatq_reply_latency_seconds_count") >= 1 else None

    text = wait_until(scraped, timeout=15, what="worker metrics")
    for name in ("chatq_generation_seconds_count", "chatq_queue_wait_seconds_count", "chatq_claims_total"):
        assert sample(text, name) >= 1, name
    assert sample(text, "chatq_sql_round_trips_total", process="worker", kind="statement") > 0
    assert "chatq_duplicate_deliveries_total" in text and "chatq_failures_total" in text
