"""gunicorn settings for the web process, from the same Settings every chatq process reads.

Worker class: gevent. A waiting client (a long-poll of up to 30 s, an event stream of up to 300 s)
is a parked greenlet and a socket — a few KiB, not a thread — so one process holds thousands of
them while every other request is served at once (docs/api.md, "Writing a client": what a waiting
client costs). The Flask code is the same code that runs under any worker: gunicorn
monkey-patches the standard library when the worker starts, psycopg 3 cooperates with gevent by
itself, and redis-py and kombu use the patched sockets. What bounds a process is admission
(MAX_WAITS, MAX_WAITS_PER_USER, web/waiting/admission.py), not a thread pool.
"""

import resource

from models import Settings
from models.process.metrics_support import prepare_multiprocess_dir

# Metrics from every worker process are added up at /metrics (prometheus-client multiprocess mode);
# this must happen before the app, and so prometheus-client, is imported.
prepare_multiprocess_dir("web")
settings = Settings.from_env()

# Every waiting client holds a socket: let the process open as many files as the system allows.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


bind = f"{settings.bind_host}:{settings.port}"
workers = settings.web_concurrency
# The gevent worker with a deadline on client sockets and a drain on SIGTERM: gunicorn_worker.py
# (this file holds settings only).
worker_class = "gunicorn_worker.Worker"
# Simultaneous connections per process: the waits admission lets in, and room for everything else
# (posts, reads, health checks) beside them; past it gunicorn stops accepting until one closes.
worker_connections = settings.max_waits + 1000
# Long-polls last up to 30 s; the timeout is for a stuck worker, not a slow request.
timeout = 60
# A deploy's SIGTERM lets waits and streams end within this (their clients then poll again).
graceful_timeout = 30
# Longer than the load balancer's idle time for upstream connections (deploy/nginx.conf: 60 s):
# otherwise gunicorn may close a connection nginx is about to reuse, and a POST sent on it fails
# with 502 (nginx does not replay a request it has sent). It also bounds reading a request's head.
keepalive = 75
accesslog = "-"
# No gunicornc control socket: every master on a host would bind the same default path
# (~/.gunicorn/gunicorn.ctl), so with several web processes per host (`make cluster`, the tests) it
# would answer for whichever started last. Processes are managed by signals (TERM, QUIT, HUP).
control_socket_disable = True


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # The app, its modules and its pools live as long as the process: out of the collector's sight
    # (gc.freeze), a full collection walks only what requests made, and a resumed 2,000-token
    # response stream no longer waits ~100 ms for one now and then (bench/openai_api.py: p95).
    import gc

    gc.freeze()
