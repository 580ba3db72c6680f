"""deploy/k8s, checked without a cluster: `kubectl kustomize` renders the example overlay, every
object validates against the Kubernetes API schemas (and KEDA's) offline, and what schemas cannot
see holds — selectors match labels, probes ask routes the app serves, every variable is one the
code reads, commands are the Procfile's, and grace periods outlast what they wait for."""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import requests
import yaml

from models import Settings
from scripts.llama import cache
from tests.support import ROOT

K8S = ROOT / "deploy" / "k8s"
VALIDATE = K8S / "validate"


@pytest.fixture(scope="module")
def rendered() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here (its client alone renders kustomize offline)")
    return subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / "example")], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each workload's pod template (Deployments and the migration Job)."""
    return {obj["metadata"]["name"]: obj["spec"]["template"] for obj in objects if obj["kind"] in ("Deployment", "Job")}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_every_object_validates_against_the_api_schemas(rendered: str) -> None:
    # kubernetes-models (npm) ships the API's OpenAPI schemas with a validator for each kind, and
    # @kubernetes-models/keda KEDA's: pinned by package-lock.json, installed once per machine.
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js is not installed here")
    lock = (VALIDATE / "package-lock.json").read_bytes()
    home = cache() / f"k8s-validate-{hashlib.sha256(lock).hexdigest()[:12]}"
    if not (home / "node_modules").exists():
        home.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(VALIDATE / name, home / name)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=home, check=True, capture_output=True)
    shutil.copy(VALIDATE / "validate.mjs", home / "validate.mjs")
    result = subprocess.run([node, "validate.mjs"], cwd=home, input=rendered, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len([doc for doc in yaml.safe_load_all(rendered) if doc])
    assert all(line.startswith("valid ") for line in lines), lines
    kinds = {line.split()[2] for line in result.stdout.splitlines()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "NetworkPolicy",
            "ScaledObject", "Secret", "ConfigMap"} <= kinds


def test_selectors_match_the_labels_of_what_they_select(objects) -> None:
    pods = pod_specs(objects)
    deployments = of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        assert matches(deployment["spec"]["selector"]["matchLabels"], pods[name]["metadata"]["labels"]), name
    for name, service in of_kind(objects, "Service").items():
        selector = service["spec"]["selector"]
        targets = [pod for pod, spec in pods.items() if matches(selector, spec["metadata"]["labels"])]
        assert len(targets) == 1, (name, targets)
        ports = {port["name"] for container in pods[targets[0]]["spec"]["containers"] for port in container["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports, name
    for name, budget in of_kind(objects, "PodDisruptionBudget").items():
        assert any(matches(budget["spec"]["selector"]["matchLabels"], pods[d]["metadata"]["labels"])
                   for d in deployments), name
    for name, policy in of_kind(objects, "NetworkPolicy").items():
        assert any(matches(policy["spec"]["podSelector"]["matchLabels"], spec["metadata"]["labels"])
                   for spec in pods.values()), name
    scaled = [obj["spec"]["scaleTargetRef"]["name"] for kind in ("HorizontalPodAutoscaler", "ScaledObject")
              for obj in of_kind(objects, kind).values()]
    assert set(scaled) <= set(deployments) and "chatq-worker" in scaled and "chatq-web" in scaled


def test_probes_ask_routes_the_app_serves(objects, stack) -> None:
    web = pod_specs(objects)["chatq-web"]["spec"]["containers"][0]
    assert (web["readinessProbe"]["httpGet"]["path"], web["livenessProbe"]["httpGet"]["path"]) == ("/health", "/livez")
    for probe in ("readinessProbe", "livenessProbe"):
        assert requests.get(stack.url + web[probe]["httpGet"]["path"], timeout=5).status_code == 200
    # Flower's health check lives under its URL prefix.
    flower = pod_specs(objects)["chatq-flower"]["spec"]["containers"][0]
    prefix = next(arg.split("=", 1)[1] for arg in flower["command"] if arg.startswith("--url_prefix="))
    assert flower["readinessProbe"]["httpGet"]["path"] == f"/{prefix}/healthcheck"
    # The worker's liveness reads the file its heartbeat step touches.
    worker = pod_specs(objects)["chatq-worker"]["spec"]["containers"][0]
    heartbeat = next(item["value"] for item in worker["env"] if item["name"] == "WORKER_HEARTBEAT_FILE")
    assert heartbeat in " ".join(worker["livenessProbe"]["exec"]["command"])


def test_every_variable_set_is_one_the_code_reads(objects) -> None:
    known = set(Settings.variables())  # configuration is read in one place (the contract)
    assert {"DATABASE_URL", "REDIS_URL", "AUTH_SECRET", "LEASE_SECONDS"} <= known  # the reading works
    given = set(of_kind(objects, "ConfigMap")["chatq-config"]["data"])
    given |= {key for secret in of_kind(objects, "Secret").values() for key in secret["data"]}
    for spec in pod_specs(objects).values():
        for container in spec["spec"]["containers"] + spec["spec"].get("initContainers", []):
            given |= {item["name"] for item in container.get("env", [])}
    assert given - known == set()


def test_commands_are_the_procfiles(objects) -> None:
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    containers = {name.removeprefix("chatq-"): spec["spec"]["containers"][0]["command"]
                  for name, spec in pod_specs(objects).items()}
    for process in ("web", "worker", "webhooks", "beat"):
        assert containers[process] == shlex.split(procfile[process]), process
    flower = shlex.split(procfile["flower"])
    assert containers["flower"][: len(flower) - 1] == flower[:-1]  # the port: the Procfile's default
    assert containers["migrate"] == ["alembic", "upgrade", "head"]  # the contract's migration command


def test_grace_periods_outlast_what_they_wait_for(objects) -> None:
    specs = pod_specs(objects)
    config = of_kind(objects, "ConfigMap")["chatq-config"]["data"]
    worker = specs["chatq-worker"]["spec"]
    worker_env = {item["name"]: item["value"] for item in worker["containers"][0]["env"]}
    settings = Settings.from_env({**config, **worker_env, "DATABASE_URL": "postgresql+psycopg://x/y",
                                  "REDIS_URL": "redis://x"})
    grace = worker["terminationGracePeriodSeconds"]
    assert grace > settings.task_time_limit  # a generation is never cut off by SIGKILL ...
    assert grace > settings.worker_shutdown_grace_seconds  # ... and gives its message back in time
    web = specs["chatq-web"]["spec"]
    pause = int(web["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = int(re.search(r"^graceful_timeout = (\d+)", (ROOT / "gunicorn.conf.py").read_text(), re.M).group(1))
    assert web["terminationGracePeriodSeconds"] > pause + graceful
    assert of_kind(objects, "Deployment")["chatq-beat"]["spec"]["replicas"] == 1


def test_the_image_runs_as_the_user_the_pods_require() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", dockerfile, re.M), "pods set runAsNonRoot with runAsUser 10001"

