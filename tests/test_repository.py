"""The repository keeps its promises: CI runs the README's test command, and the code is lint-clean."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_opens_with_install_and_test_commands() -> None:
    install_and_demo, tests = _readme_commands()[:2]
    assert install_and_demo.startswith("bash scripts/install.sh") and "fedprune demo" in install_and_demo
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _readme_commands()[1] in ci.splitlines()


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed",
)
def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed",
)
def test_the_whole_tree_is_formatted() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "format", "--check", "--quiet", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, "run `ruff format .`: " + result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "mypy").exists(), reason="mypy is not installed")
def test_mypy_finds_nothing_in_the_packages(tmp_path: Path) -> None:
    mypy = str(Path(sys.executable).parent / "mypy")
    packages = ["proto", "pruning", "coordinator", "participant", "privacy", "fedprune"]
    result = subprocess.run(
        [mypy, "--cache-dir", str(tmp_path / "mypy-cache"), *packages],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _import_graph(packages: list[str]) -> dict[str, set[str]]:
    """Return module -> the modules of ``packages`` it imports (at module level or inside functions)."""
    files: dict[str, Path] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            if "_pb2" not in path.name:
                parts = path.relative_to(ROOT).with_suffix("").parts
                files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from package import name` imports the package, and the submodule when name is one.
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            graph[name] |= {target for target in targets if target in files and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the groups of two or more modules that each reach all the others through imports."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        frontier = [start]
        while frontier:
            for target in graph[frontier.pop()] - seen:
                seen.add(target)
                frontier.append(target)
        reach[start] = seen
    groups = {tuple(sorted({m, *(o for o in reach[m] if m in reach[o])})) for m in graph if m in reach[m]}
    return sorted(list(group) for group in groups if len(group) > 1)


def test_no_import_cycle_among_our_modules() -> None:
    packages = ["proto", "pruning", "coordinator", "participant", "privacy", "fedprune"]
    cycles = _cycles(_import_graph(packages))
    assert not cycles, "modules that import each other (directly or in a ring): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


# What each package may import of ours (docs/ARCHITECTURE.md): the pruning core and the privacy layers are
# leaves; the protocol vocabulary sits on them; the two roles speak it and never import each other; the
# hosts (CLI, demo, simulation) sit on top.
ALLOWED_PACKAGE_IMPORTS = {
    "pruning": set(),
    "privacy": set(),
    "proto": {"pruning", "privacy"},
    "coordinator": {"pruning", "privacy", "proto"},
    "participant": {"pruning", "privacy", "proto"},
    "fedprune": {"pruning", "privacy", "proto", "coordinator", "participant"},
}


def test_packages_import_one_way() -> None:
    graph = _import_graph(list(ALLOWED_PACKAGE_IMPORTS))
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED_PACKAGE_IMPORTS[module.split(".")[0]]
    )
    assert not wrong, "imports against the layering of docs/ARCHITECTURE.md: " + "; ".join(wrong)


def test_the_import_cycle_check_finds_a_ring() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]
