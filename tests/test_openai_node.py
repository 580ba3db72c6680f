"""OpenAI's Node SDK (`openai` from npm, pinned below) against real gunicorn, Celery and Postgres:
the same calls an app on Node makes, through its own client (tests/node/sdk_check.mjs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, Api

NODE_SDK = "openai@7.55.0"
SDK_HOME = Path(os.environ.get("CHATQ_CACHE", Path.home() / ".cache" / "chatq")) / "node-openai-7.55.0"


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    """The SDK installed once into the cache (npm is reachable here; CI installs it the same way)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    if not (SDK_HOME / "node_modules" / "openai" / "package.json").exists():
        SDK_HOME.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", NODE_SDK], cwd=SDK_HOME,
                       check=True, timeout=300)
    return SDK_HOME / "node_modules"


def test_the_node_sdk_creates_polls_streams_and_reads_errors(api: Api, node_sdk: Path) -> None:
    key = api.post("/api/v1/keys", json={"name": "node"}).json()["key"]
    # Beside its node_modules: an ES module finds packages from where it lives (NODE_PATH is not read).
    script = shutil.copy(ROOT / "tests" / "node" / "sdk_check.mjs", node_sdk.parent / "sdk_check.mjs")
    ran = subprocess.run(["node", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CHATQ_V1": api.base_url + "/v1", "CHATQ_KEY": key})
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen["background"] == {"status": "completed", "text": seen["background"]["text"]}
    assert seen["background"]["text"].startswith("Added “node check”")
    assert seen["streamed"]["numbers"] == list(range(len(seen["streamed"]["numbers"])))
    assert seen["streamed"]["deltas"] == seen["streamed"]["text"] and "node check" in seen["streamed"]["text"]
    assert "node check" in seen["completion"]
    assert seen["notFound"] == "NotFoundError"
