"""The tree stays ruff-clean and mypy-strict-clean (configuration in pyproject.toml), and tts_core never
imports telephony."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_reports_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_reports_nothing() -> None:
    """mypy --strict over the modules [tool.mypy] lists (tts_core, the protocol modules).

    The incremental cache (.mypy_cache, ignored by git) makes a rerun take about a second; the
    first run in a fresh checkout takes several.
    """
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tts_core_never_imports_telephony() -> None:
    offenders = []
    for path in (ROOT / "tts_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "telephony"]
    assert offenders == []
