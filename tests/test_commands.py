"""The commands a person runs: `make run` (scripts/devstack.py run) and `make cluster`
(scripts/cluster.py) bring up every process and serve the API, here against the test database."""

from __future__ import annotations

import signal
import sys

import pytest
import requests

from scripts.cluster import nginx_binary
from tests.support import ARTIFACTS, Api, Process, free_port, wait_until


def _serving(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stop(process: Process) -> None:
    process.kill(signal.SIGINT, grace=20)  # what Ctrl-C does: honcho and the script stop their children
    process.kill(signal.SIGKILL)


def test_make_run_serves_the_api_the_page_and_flower(stack_env) -> None:
    port, flower = free_port(), free_port()
    env = {**stack_env, "PORT": str(port), "FLOWER_PORT": str(flower), "WORKER_METRICS_PORT": str(free_port())}
    run = Process("make-run", [sys.executable, "scripts/devstack.py", "run"], env).start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _serving(url + "/health"), timeout=40, what="make run's web")
        wait_until(lambda: _serving(f"http://127.0.0.1:{flower}/api/workers"), timeout=40, what="make run's Flower")
        assert "chatq" in requests.get(url + "/", timeout=5).text
        _, answered = Api(url).ask("Add task: via make run")
        assert "via make run" in answered["reply"]["content"]
        assert f"API:    http://127.0.0.1:{port}/api/v1" in run.log_text()
    finally:
        _stop(run)


def test_make_cluster_serves_through_nginx(stack_env) -> None:
    if nginx_binary() is None:
        pytest.skip("no nginx here: `make test` installs Debian's nginx where apt-get can")
    port, metrics, flower = free_port(), free_port(), free_port()
    web_ports = f"{free_port()},{free_port()}"
    env = {**stack_env, "CLUSTER_PORT": str(port), "CLUSTER_WEB_PORTS": web_ports,
           "WORKERS": "1", "CLUSTER_METRICS_PORT": str(metrics), "FLOWER_PORT": str(flower),
           "CLUSTER_DIR": str(ARTIFACTS / "make-cluster")}
    cluster = Process("make-cluster", [sys.executable, "scripts/cluster.py"], env).start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _serving(url + "/health"), timeout=40, what="the cluster's nginx")
        nodes: set[str] = set()

        def both_nodes_answer() -> bool:
            assert cluster.popen is not None and cluster.popen.poll() is None, cluster.log_text()[-3000:]
            try:
                response = requests.get(url + "/livez", timeout=5)
            except requests.RequestException:
                return False
            if response.status_code == 200:
                nodes.add(response.headers["X-Served-By"])
            return nodes == {"web1", "web2"}

        wait_until(both_nodes_answer, timeout=40, interval=0.2, what="both web nodes behind nginx")
        _, answered = Api(url).ask("Add task: via make cluster")
        assert "via make cluster" in answered["reply"]["content"]
    finally:
        _stop(cluster)
