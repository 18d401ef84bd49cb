"""The package graph runs one way: lockd uses lockd.backends, never the reverse.

A backend stores versioned bytes; what they mean (layouts, semaphores) lives in lockd. This
walks every import of every module under backends/ (the folder installed as
lockd.backends) and fails on any import of lockd outside the package itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKEND_MODULES = sorted((ROOT / "backends").rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("path", BACKEND_MODULES, ids=lambda p: p.name)
def test_backends_import_nothing_from_lockd(path: Path) -> None:
    bad = [
        m for m in imported_modules(path)
        if (m == "lockd" or m.startswith("lockd.")) and not m.startswith("lockd.backends")
    ]
    bad += [m for m in imported_modules(path) if m == "backends" or m.startswith("backends.")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: use relative imports within " \
        "the package, and nothing of lockd"


def test_the_walk_sees_imports() -> None:
    """The check above can fail: it finds the imports it is looking for."""
    service = imported_modules(ROOT / "lockd" / "service.py")
    assert "lockd.backends" in service and "lockd.semaphore" in service


def test_backends_are_installed_as_lockd_backends() -> None:
    """One import name in site-packages: no top-level ``backends`` package."""
    code = (
        "import importlib.util, lockd.backends, lockd.backends.sqlite;"
        "print(importlib.util.find_spec('backends') is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "True"


def test_no_module_registers_itself_on_import() -> None:
    """The CLI lists every subcommand wherever it is imported from, in a fresh process."""
    code = "from lockd.cli import build_parser; build_parser().parse_args(['status', '--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: lockd status" in out.stdout
