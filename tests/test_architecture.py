"""The shape of the package: no import circle, small modules, no programs held in strings."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_hostperf"
MAX_MODULE_LINES = 450
MAX_STRING_LINES = 40
#: Modules the backends branch splits (issue #11, backends half); the lead empties this at merge.
BEING_SPLIT: set[str] = set()
#: The pure core imports neither pytest nor the run loop.
PURE = ("model", "stats", "verdict", "baselines", "count_baselines", "options", "targets", "compare", "run.answers",
        "pairing", "signedrank", "run.paired")


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
            for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports when it is imported (not under TYPE_CHECKING, not in functions)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.parse(path.read_text()).body:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_circle() -> None:
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    # A package's __init__ is imported with each of its modules: an edge to a parent package is not a circle.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_checker_finds_a_circle(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from pytest_hostperf import model\n")
    b.write_text("import pytest_hostperf.model\n")
    assert imports("x", a, {"pytest_hostperf.model"}) == {"pytest_hostperf.model"}
    b.write_text("if True:\n    import pytest_hostperf.model\n")  # only top-level statements count
    assert imports("x", b, {"pytest_hostperf.model"}) == set()


def test_modules_are_small_and_hold_no_programs_in_strings() -> None:
    problems = []
    for path in modules().values():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in BEING_SPLIT:
            continue
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            problems.append(f"{relative}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_STRING_LINES:
                    problems.append(f"{relative}:{node.lineno}: a {lines}-line string")
    assert not problems, problems


def test_pure_modules_import_neither_pytest_nor_the_run_loop() -> None:
    code = ("import sys\n"
            f"for name in {PURE!r}:\n"
            "    __import__('pytest_hostperf.' + name)\n"
            "bad = sorted(m for m in sys.modules if m == 'pytest' or m.startswith(('pytest_hostperf.run.plan',"
            " 'pytest_hostperf.run.pool', 'pytest_hostperf.controller', 'pytest_hostperf.environments')))\n"
            "print(','.join(bad))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=PACKAGE.parent)
    assert done.stdout.strip() == ""
