"""The shape the code promises a newcomer: no class or function in telephony/ reaches 200 lines, and the
module tables in README.md name every module of telephony/ and tts_core/ (so a reader finds a concept by
its file name and the table never drifts from the code)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 200
PACKAGES = ("telephony", "tts_core")


def oversized(path: Path, limit: int = MAX_LINES, root: Path = ROOT) -> list[str]:
    """Every class or function in ``path`` of ``limit`` lines or more, as 'file: name (n lines)'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            size = node.end_lineno - node.lineno + 1
            if size >= limit:
                found.append(f"{path.relative_to(root)}: {node.name} ({size} lines)")
    return found


def test_no_class_or_function_in_telephony_reaches_200_lines() -> None:
    large = [entry for path in sorted((ROOT / "telephony").rglob("*.py")) for entry in oversized(path)]
    assert large == []


def test_the_size_check_sees_a_large_function(tmp_path: Path) -> None:
    big = tmp_path / "probe.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    big.write_text(f"def huge() -> None:\n{body}\n", encoding="utf-8")
    assert oversized(big, root=tmp_path) == [f"probe.py: huge ({MAX_LINES + 1} lines)"]


_CELL_PATH = re.compile(r"`([\w./-]+)`")


def modules_named_in_readme(text: str) -> set[str]:
    """Module paths the README's module tables name.

    A row's first cell lists backticked paths; a bare file name (``playout.py``) is relative to the folder
    of the path before it in the same cell, a folder (``tts_core/stt/``) names every module under it,
    and the test-tooling table's names are relative to ``telephony/testing/``.
    """
    named: set[str] = set()
    folder = ""
    for line in text.splitlines():
        if line.startswith("#"):
            folder = "telephony/testing/" if "telephony/testing/" in line else ""
        if not line.startswith("| `"):
            continue
        base = folder
        for item in _CELL_PATH.findall(line.split("|")[1]):
            if "/" in item.rstrip("/"):
                named.add(item)
                base = item if item.endswith("/") else item.rsplit("/", 1)[0] + "/"
            elif item.endswith("/"):
                named.add(base + item)
            else:
                named.add(base + item)
    return named


def unlisted_modules(readme: str) -> list[str]:
    named = modules_named_in_readme(readme)
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" and path.parent.as_posix() != (ROOT / package).as_posix():
                continue  # a package is named by its folder
            if path.name in ("__init__.py", "__main__.py"):
                continue
            if rel in named or any(rel.startswith(n) for n in named if n.endswith("/")):
                continue
            missing.append(rel)
    return missing


def test_readme_module_tables_name_every_module() -> None:
    assert unlisted_modules((ROOT / "README.md").read_text(encoding="utf-8")) == []


def test_the_module_check_sees_a_missing_row() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `tts_core/fleet.py`"))
    before = set(unlisted_modules(readme))
    assert set(unlisted_modules(readme.replace(row + "\n", ""))) - before == {"tts_core/fleet.py"}
