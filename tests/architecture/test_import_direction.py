"""The package boundaries, as tests: imports point one way.

    node ──▶ storage ◀── jobs ──▶ inference        (all may use config/ and common/)

- inference/ imports neither node/, storage/ nor jobs/ (anywhere, lazily or not);
- storage/ imports neither inference/, jobs/ nor node/;
- common/ and config/ import none of the packages above;
- node/ imports neither torch nor inference/ at import time (the ``segment``
  command may load them when it runs): checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "config", "demo", "inference", "jobs", "node", "storage")

FORBIDDEN: dict[str, set[str]] = {
    "inference": {"node", "storage", "jobs"},
    "storage": {"inference", "jobs", "node"},
    "common": {"inference", "jobs", "node", "storage", "demo"},
    "config": {"inference", "jobs", "node", "storage", "demo"},
    "jobs": {"node"},
    "node": {"jobs", "demo"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level packages of the repository that a module imports, with the line."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.add((top, node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    violations = [
        f"{path.relative_to(REPO)}:{line} imports {top}"
        for path in sorted((REPO / package).rglob("*.py"))
        for top, line in sorted(imported_packages(path))
        if top in FORBIDDEN[package]
    ]
    assert violations == []


def test_node_imports_neither_torch_nor_inference_at_import_time() -> None:
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "node").glob("*.py")
        if path.name != "__init__.py"
    )
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'monai', 'inference', 'jobs'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The static check reads lazy imports inside functions too."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from storage.jobs import Job\n    import node.cli\n")
    assert imported_packages(module) == {("storage", 2), ("node", 3)}
