"""The architecture's rules, enforced by reading the code: stateless processes, and dependencies
that point one way (web -> models <- worker)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("web", "worker", "models")
MUTABLE_FACTORIES = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter", "WeakValueDictionary"}
MUTATING_METHODS = {"append", "extend", "add", "update", "setdefault", "insert", "appendleft", "__setitem__"}


def sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def _is_mutable(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        return name in MUTABLE_FACTORIES
    return False


def state_findings(path: Path) -> list[str]:
    """Ways a process keeps state between requests: module-level mutable containers (unless an
    UPPER_CASE constant), `global`, argument-taking in-process caches, Flask's cookie session,
    files opened for writing, and functions that mutate module-level names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    module_names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name):
                module_names.add(target.id)
                if _is_mutable(node.value) and not target.id.isupper() and not target.id.startswith("__"):
                    found.append(f"{path.name}:{node.lineno} module-level mutable {target.id}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"{path.name}:{node.lineno} global {node.names}")
        if isinstance(node, ast.FunctionDef):
            has_args = bool(node.args.args or node.args.kwonlyargs or node.args.vararg or node.args.kwarg)
            for decorator in node.decorator_list:
                name = getattr(decorator, "id", None) or getattr(decorator, "attr", None) or getattr(
                    getattr(decorator, "func", None), "attr", getattr(getattr(decorator, "func", None), "id", None))
                if name in {"cache", "lru_cache"} and has_args:
                    found.append(f"{path.name}:{node.lineno} in-process cache on {node.name}")
            for inner in ast.walk(node):
                if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                        and inner.func.attr in MUTATING_METHODS and isinstance(inner.func.value, ast.Name)
                        and inner.func.value.id in module_names):
                    found.append(f"{path.name}:{inner.lineno} {node.name} mutates module-level "
                                 f"{inner.func.value.id}")
        if isinstance(node, ast.ImportFrom) and node.module == "flask" and any(
                alias.name == "session" for alias in node.names):
            found.append(f"{path.name}:{node.lineno} Flask session")
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                found.append(f"{path.name}:{node.lineno} file opened for writing")
    return found


@pytest.mark.parametrize("path", sources(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_processes_keep_no_state_between_requests(path: Path) -> None:
    assert state_findings(path) == []


def test_the_state_check_catches_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import functools\nfrom flask import session\nseen = {}\nCOUNT = 0\n"
        "def remember(key):\n    global COUNT\n    seen.update({key: 1})\n"
        "@functools.lru_cache(maxsize=None)\ndef lookup(user):\n    return user\n"
        "def dump():\n    open('state.txt', 'w')\n"
    )
    found = " ".join(state_findings(sample))
    for expected in ("module-level mutable seen", "global", "mutates module-level seen", "in-process cache",
                     "Flask session", "file opened for writing"):
        assert expected in found


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("web", {"worker"}), ("worker", {"web"}),
                                                    ("models", {"web", "worker"})])
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {str(path.relative_to(ROOT)): imported_packages(path) & forbidden for path in sources(package)}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_jobs_carry_ids_only() -> None:
    """Every task signature takes ids and plain values, never ORM objects."""
    tree = ast.parse((ROOT / "worker" / "tasks.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                "task" in ast.unparse(decorator) for decorator in node.decorator_list):
            annotations = {arg.arg: ast.unparse(arg.annotation) for arg in node.args.args if arg.annotation}
            assert set(annotations.values()) <= {"Task", "str"}, (node.name, annotations)


SENDING_CALLS = {"send_task", "apply_async", "delay", "publish"}


def sending_calls(path: Path) -> list[str]:
    """Calls that send a job or publish a notification: `x.send_task(...)`, `x.publish(...)`, ..."""
    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno} {node.func.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SENDING_CALLS]


def test_only_models_sends_answer_jobs_and_announces_changes() -> None:
    """web and worker both send answer jobs and announce changes; the contract between them (job
    name, arguments, headers; channels and payloads) lives in models/coordination/messaging.py alone."""
    assert [finding for path in sources("web", "worker") for finding in sending_calls(path)] == []
    assert sending_calls(ROOT / "models" / "coordination" / "messaging.py")  # and the check sees them where they are


AFTER_COMMIT_ONLY = {"send_answer_job", "announce", "request_cancel"}


def direct_calls(path: Path, names: set[str]) -> list[str]:
    """`name(...)` calls in a file (a name passed to after_commit is not a call)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {called}()")
    return found


def test_views_write_through_transaction_and_send_only_after_the_commit() -> None:
    """One way for a view to talk to Postgres: reads through reader(), writes in transaction();
    jobs, announcements and cancels leave through after_commit, so none is sent for a write that
    did not commit."""
    views = [path for path in sources("web") if path.name != "services.py"]
    assert [call for path in views for call in direct_calls(path, AFTER_COMMIT_ONLY)] == []
    assert [call for path in views for call in direct_calls(path, {"db", "begin"})] == []
    assert direct_calls(ROOT / "web" / "services.py", {"begin"})  # and the check sees them where they are
