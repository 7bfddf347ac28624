"""Test tooling stays out of the product: no server module imports ``telephony.testing``, scripts
import the installed packages instead of editing ``sys.path``, and the tooling's classes stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTING = ROOT / "telephony" / "testing"


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an import statement names, ``from a import b`` counted as ``a`` and ``a.b``
    (``b`` may be a submodule: ``from telephony import testing``)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_no_server_module_imports_the_test_tooling() -> None:
    offenders = []
    for path in (ROOT / "telephony").rglob("*.py"):
        if TESTING in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in imported_modules(tree)
                      if name == "telephony.testing" or name.startswith("telephony.testing.")]
        relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
        offenders += [f"{path.relative_to(ROOT)}: relative import" for _ in relative]
    assert offenders == []


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that touch ``sys.path`` (``sys.path.insert``, ``sys.path[:0] = ...``, ``from sys import
    path``)."""
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    lines += [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module == "sys" and any(alias.name == "path" for alias in node.names)]
    return lines


def test_scripts_import_the_installed_packages_without_editing_sys_path() -> None:
    offenders = []
    for path in (ROOT / "scripts").glob("*.py"):
        lines = sys_path_edits(ast.parse(path.read_text(encoding="utf-8")))
        offenders += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert offenders == []
