"""The deployment files: docker-compose.yml as the issue describes it, the Procfile, nginx."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_scale_and_wait_for_each_other(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "nginx", "worker", "webhooks", "beat", "flower"} <= services.keys()
    assert services["web"]["deploy"]["replicas"] == 3
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "noeviction" in services["redis"]["command"]
    for name in ("postgres", "redis", "web"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["nginx"]["depends_on"]["web"]["condition"] == "service_healthy"
    secrets = {services[name]["environment"]["AUTH_SECRET"] for name in ("web", "worker", "beat", "flower", "migrate")}
    assert len(secrets) == 1  # every node verifies the same tokens
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_procfile_names_the_processes() -> None:
    names = {line.split(":", 1)[0] for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()}
    # The contract's four, and the webhook deliveries' own workers (`-Q webhooks`).
    assert names == {"web", "worker", "webhooks", "beat", "flower"}


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # Debian's package; `make test` installs it where it can
    return [legacy] if legacy else None


def test_docker_compose_config_is_valid() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` can be installed here")
    env = {"AUTH_SECRET": "x" * 32, "FLOWER_BASIC_AUTH": "ops:pw", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    result = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    # The `ha` profile (a Postgres standby, Redis with a replica and three sentinels) is valid too.
    replicated = subprocess.run([*command, "-f", str(COMPOSE), "--profile", "ha", "config", "--services"],
                                capture_output=True, text=True, env=env)
    assert replicated.returncode == 0, replicated.stderr
    assert {"pg-primary", "pg-standby", "redis-primary", "redis-replica", "sentinel-1", "sentinel-2",
            "sentinel-3"} <= set(replicated.stdout.split())
    missing_secret = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                                    env={"PATH": env["PATH"]})
    assert missing_secret.returncode != 0 and "AUTH_SECRET" in missing_secret.stderr
