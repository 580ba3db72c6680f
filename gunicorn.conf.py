"""gunicorn settings for the web process (environment only: PORT, WEB_CONCURRENCY, WEB_THREADS)."""

import os

from models.metrics_support import prepare_multiprocess_dir

# Metrics from every worker process are added up at /metrics (prometheus-client multiprocess mode);
# this must happen before the app, and so prometheus-client, is imported.
prepare_multiprocess_dir("web")

bind = f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104 - behind a load balancer
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread: a long-poll parks a thread, not a process, and holds no database connection while it
# waits, so one process serves many waiting clients with plain blocking code (no monkey-patching
# of psycopg or redis, which gevent would need).
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "32"))
# Long-polls last up to 30 s; the timeout is for a stuck worker, not a slow request.
timeout = 60
graceful_timeout = 30
# Longer than the load balancer's idle time for upstream connections (deploy/nginx.conf: 60 s):
# otherwise gunicorn may close a connection nginx is about to reuse, and a POST sent on it fails
# with 502 (nginx does not replay a request it has sent). Idle keep-alive costs no thread in gthread.
keepalive = 75
accesslog = "-"


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
