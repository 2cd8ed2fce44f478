"""The repository keeps its promises: CI runs the README's test command, and the code is lint-clean."""

from __future__ import annotations

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
