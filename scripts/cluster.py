"""A local cluster without Docker: 3 gunicorn web nodes on loopback behind a real nginx, N Celery
workers (WORKERS=N), beat and Flower, until Ctrl-C.

    make cluster            # or: WORKERS=4 WEB_NODES=3 python scripts/cluster.py

Ports: CLUSTER_PORT (nginx, 8080), CLUSTER_WEB_PORT (the first web node, 8101; or CLUSTER_WEB_PORTS,
a comma-separated list), CLUSTER_METRICS_PORT (the first worker's metrics, 9811), FLOWER_PORT (5555).

Uses DATABASE_URL / REDIS_URL, or the embedded defaults (scripts/devstack.py). nginx comes from
Debian's package (`make cluster` installs it where it can). Every response names the node that
served it in `X-Served-By`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import devstack

ROOT = devstack.ROOT
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"


def render_nginx_conf(upstream_ports: list[int], listen_port: int, folder: Path) -> Path:
    """deploy/nginx.conf with loopback upstreams, our listen port, and pid/log files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    text = NGINX_TEMPLATE.read_text()
    upstreams = "\n        ".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=3s;" for port in upstream_ports)
    replacements = {
        "upstreams": upstreams,
        "listen": f"listen 127.0.0.1:{listen_port};",
        "pid": f"pid {folder / 'nginx.pid'};",
        "error_log": f"error_log {folder / 'error.log'} warn;",
    }
    for marker, line in replacements.items():
        text = re.sub(rf"^(\s*)\S.*# chatq: {marker}$", lambda m, line=line: m.group(1) + line, text, flags=re.M)
    if os.geteuid() == 0:
        text = "user root;\n" + text  # temp files under `folder`, which root owns
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = text.replace("http {\n", f"http {{\n    {temp}_temp_path {folder / temp};\n", 1)
    conf = folder / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def _wait_for_nodes(ports: list[int], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    for port in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"web node on port {port} did not start")
                time.sleep(0.2)


def main() -> int:
    nginx = nginx_binary()
    if nginx is None:
        sys.exit("nginx is not installed: `apt-get install nginx` (make cluster does this where it can)")
    env = devstack.environment()
    env.setdefault("CHATQ_DEV", "1")
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "1")  # receivers on this machine, in development
    env.setdefault("FLOWER_BASIC_AUTH", f"dev:{secrets.token_urlsafe(12)}")  # see devstack.py run
    bin_dir = Path(sys.executable).parent
    web_nodes, workers = int(os.environ.get("WEB_NODES", "3")), int(os.environ.get("WORKERS", "2"))
    listen = int(os.environ.get("CLUSTER_PORT", "8080"))
    first_web_port = int(os.environ.get("CLUSTER_WEB_PORT", "8101"))
    first_metrics_port = int(os.environ.get("CLUSTER_METRICS_PORT", "9811"))
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    folder = Path(os.environ.get("CLUSTER_DIR", devstack.DATA / "cluster"))
    folder.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule here: it must exist first
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)

    processes: list[subprocess.Popen[bytes]] = []
    ports = [int(p) for p in os.environ.get("CLUSTER_WEB_PORTS", "").split(",") if p] or [
        first_web_port + i for i in range(web_nodes)]
    for index, port in enumerate(ports, start=1):
        node_env = {**env, "PORT": str(port), "BIND_HOST": "127.0.0.1", "SERVER_ID": f"web{index}",
                    "PROMETHEUS_MULTIPROC_DIR": ""}
        processes.append(subprocess.Popen([str(bin_dir / "gunicorn"), "web:create_app()", "--config",
                                           "gunicorn.conf.py"], cwd=ROOT, env=node_env))
    for index in range(1, workers + 1):
        worker_env = {**env, "WORKER_METRICS_PORT": str(first_metrics_port + index - 1),
                      "PROMETHEUS_MULTIPROC_DIR": ""}
        processes.append(subprocess.Popen([str(bin_dir / "celery"), "-A", "worker", "worker", "--loglevel=INFO",
                                           "-n", f"worker{index}@%h"], cwd=ROOT, env=worker_env))
    # Webhook deliveries: a worker of their own (the Procfile's `webhooks`).
    processes.append(subprocess.Popen([str(bin_dir / "celery"), "-A", "worker", "worker", "-Q", "webhooks",
                                       "--loglevel=INFO", "-n", "webhooks@%h"], cwd=ROOT,
                                      env={**env, "WORKER_METRICS_PORT": "0", "PROMETHEUS_MULTIPROC_DIR": ""}))
    processes.append(subprocess.Popen([str(bin_dir / "celery"), "-A", "worker", "beat", "--loglevel=INFO",
                                       "-s", str(folder / "celerybeat-schedule")], cwd=ROOT, env=env))
    processes.append(subprocess.Popen([str(bin_dir / "celery"), "-A", "worker", "flower", f"--port={flower_port}"],
                                      cwd=ROOT, env=env))
    # nginx only once every node serves: a node refusing connections at start-up is marked down for
    # fail_timeout, and with all of them down nginx answers 502 to everything for that while.
    _wait_for_nodes(ports)
    conf = render_nginx_conf(ports, listen, folder)
    processes.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"]))
    print(f"\nchatq cluster: {len(ports)} web nodes ({', '.join(map(str, ports))}) behind nginx on "
          f"http://127.0.0.1:{listen}, {workers} workers, beat, Flower on http://127.0.0.1:{flower_port} "
          f"(sign in as {env['FLOWER_BASIC_AUTH']})\n"
          f"  Token: CHATQ_DEV=1 .venv/bin/flask --app web token alice\n  Stop:  Ctrl-C\n", flush=True)
    # Ctrl-C or a SIGTERM (a supervisor, a test) stops every process of the cluster, not only this one.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
