"""The commands a person runs: `make run` (scripts/devstack.py run) and `make cluster`
(scripts/cluster.py) bring up every process and serve the API, here against the test database."""

from __future__ import annotations

import re
import signal
import sys

import psutil
import pytest
import requests

from scripts.cluster import nginx_binary
from tests.support import ARTIFACTS, Api, Process, free_port, wait_until


def _serving(url: str, **kwargs: object) -> bool:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code == 200
    except requests.RequestException:  # not listening yet, or too busy starting up to answer
        return False


class _SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Connections from a given local address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def _listening_addresses(process: Process) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in the process and its descendants."""
    assert process.popen is not None
    root = psutil.Process(process.popen.pid)
    found = set()
    for each in [root, *root.children(recursive=True)]:
        try:
            connections = each.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


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
        logins = re.findall(r"sign in as (dev):(\S+)\)", run.log_text())  # the log file outlives runs: the last
        assert logins, run.log_text()[-2000:]
        flower_api, credentials = f"http://127.0.0.1:{flower}/api/workers", logins[-1]
        wait_until(lambda: _serving(flower_api, auth=credentials), timeout=90, what="make run's Flower")
        assert "chatq" in requests.get(url + "/", timeout=5).text
        _, answered = Api(url).ask("Add task: via make run")
        assert "via make run" in answered["reply"]["content"]
        assert f"API:    http://127.0.0.1:{port}/api/v1" in run.log_text()
        assert f"Chat:   http://127.0.0.1:{port}/" in run.log_text()  # the README says it prints the page

        # Dev mode stays on this machine: every socket its processes listen on is on loopback ...
        # (The worker serves its metrics once ready; another stack's worker may have answered above.)
        expected = {port, flower, int(env["WORKER_METRICS_PORT"])}
        wait_until(lambda: expected <= {p for _, p in _listening_addresses(run)}, timeout=60,
                   what="make run's web, Flower and worker metrics to listen")
        listening = _listening_addresses(run)
        assert {host for host, _ in listening} == {"127.0.0.1"}, listening
        # ... and no page of another origin can drive Flower: no credentials, no answer; a
        # cross-site request is refused even with them, and nothing invites a cross-origin read.
        assert requests.get(flower_api, timeout=5).status_code == 401
        evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        cross = requests.post(f"http://127.0.0.1:{flower}/api/task/async-apply/worker.ping",
                              headers=evil, auth=credentials, json={}, timeout=5)
        assert cross.status_code == 403
        assert "Access-Control-Allow-Origin" not in requests.get(flower_api, headers=evil, timeout=5).headers
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
        # /metrics through the proxy: for this host and internal networks only. 127.0.0.2 is a
        # loopback address the config does not trust: it stands for a client from outside.
        assert requests.get(url + "/metrics", timeout=5).status_code == 200
        outside = requests.Session()
        outside.mount("http://", _SourceAddressAdapter("127.0.0.2"))
        assert outside.get(url + "/metrics", timeout=5).status_code == 403
        assert outside.get(url + "/livez", timeout=5).status_code == 200
    finally:
        _stop(cluster)
