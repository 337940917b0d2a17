"""The tree says what runs where, checked mechanically (not by promise).

- ``mineru_fleet/core``: pure. Imported with pyinfra, subprocess and socket made unimportable, and
  no module of it imports a clock, a process, a network or another layer of the package.
- ``mineru_fleet/onhost``: programs copied to hosts: standard library at the top level, each one
  runs alone (``python3 -I FILE --help`` from a folder holding only that file).
- ``mineru_fleet/sandbox`` (the test bench) is imported by no role, no core, controller or
  on-host module, and not by ``deploy.py``.
- Nothing in the repository reads a shared folder beside the checkout (a clone has none).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "mineru_fleet"
CORE = sorted(p for p in (PKG / "core").glob("*.py") if p.name != "__init__.py")
ONHOST = sorted(p for p in (PKG / "onhost").glob("*.py") if p.name != "__init__.py")
#: what the pure core may not import (top level or inside functions)
CORE_FORBIDDEN = {
    "pyinfra", "pyinfra_cli", "subprocess", "socket", "time", "datetime", "requests", "urllib",
    "http", "asyncio", "threading", "multiprocessing", "modelscope", "shutil",
    "mineru_fleet.controller", "mineru_fleet.sandbox", "mineru_fleet.onhost", "mineru_fleet.cli",
}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (``from x.y import z`` -> ``x.y`` and ``x.y.z``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            out.add(node.module.split(".")[0])
    return out


def hits(names: set[str], forbidden: set[str]) -> set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


def test_layers_exist():
    assert len(CORE) >= 6 and len(ONHOST) == 4
    assert {p.stem for p in CORE} >= {"settings", "hostfacts", "planner", "modelinfo", "diagnose", "units"}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.stem)
def test_core_imports_no_io_layer(path):
    assert not hits(imports(path), CORE_FORBIDDEN), f"{path.relative_to(REPO)} imports {hits(imports(path), CORE_FORBIDDEN)}"


def test_core_imports_with_pyinfra_subprocess_socket_unimportable():
    """Import every core module in a fresh interpreter where those modules raise ImportError.

    The third-party libraries the core builds on (pydantic, jinja2, rich) are imported and warmed
    up first: they may use sockets or processes internally (pydantic's plugin loader reaches
    ``socket`` through ``importlib.metadata``); the rule is about our code.
    """
    mods = [f"mineru_fleet.core.{p.stem}" for p in CORE]
    code = (
        "import sys, importlib\n"
        "import jinja2, pydantic, rich.console, rich.table, rich.markup\n"
        "class _Warm(pydantic.BaseModel):\n    x: int = 0\n"
        "for m in ('pyinfra', 'pyinfra_cli', 'subprocess', 'socket', '_socket'):\n"
        "    sys.modules[m] = None\n"
        f"for m in {mods!r}:\n    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('pyinfra', 'mineru_fleet.controller', 'mineru_fleet.sandbox', 'mineru_fleet.onhost')) and sys.modules[m] is not None)\n"
        f"assert not bad, bad\nprint('ok', {len(mods)})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok", str(len(mods))]


@pytest.mark.parametrize("path", ONHOST, ids=lambda p: p.stem)
def test_onhost_program_is_stdlib_only_and_runs_alone(path, tmp_path):
    assert top_level_imports(path) <= set(sys.stdlib_module_names), top_level_imports(path) - set(sys.stdlib_module_names)
    assert not hits(imports(path), {"mineru_fleet"}), "an on-host program must not import the package"
    alone = tmp_path / path.name
    shutil.copy(path, alone)
    r = subprocess.run([sys.executable, "-I", str(alone), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr[-1000:]


def _product_files() -> list[Path]:
    files = [REPO / "deploy.py", *sorted((REPO / "roles").glob("*.py"))]
    for layer in ("core", "controller", "onhost"):
        files += sorted((PKG / layer).glob("*.py"))
    return files


@pytest.mark.parametrize("path", _product_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_product_never_imports_the_sandbox(path):
    assert not hits(imports(path), {"mineru_fleet.sandbox"}), f"{path.relative_to(REPO)} imports the test sandbox"


def test_wheel_does_not_ship_a_top_level_roles_package():
    text = (REPO / "pyproject.toml").read_text()
    assert 'packages = ["mineru_fleet"]' in text


#: how a path outside the checkout was spelled (built here so this file does not itself match a grep for them)
OUTSIDE = ("/".join(["..", "shared"]), "/".join(["shared", "fixtures"]))


def test_nothing_reads_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    offenders = []
    for name in filter(None, files):
        p = REPO / name
        if p.suffix not in {".py", ".md", ".toml", ".j2", ".txt", ".json", ""} or not p.is_file() or p == Path(__file__):
            continue
        text = p.read_text(errors="replace")
        if any(needle in text for needle in OUTSIDE):
            offenders.append(name)
    assert not offenders, f"these files point outside the repository: {offenders}"


def test_pyinfra_public_api_only():
    """No import of pyinfra's CLI package or its private context/stage helpers (the pin can move)."""
    files = [REPO / "deploy.py", REPO / "config.py", *REPO.glob("roles/*.py"), *PKG.rglob("*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("bench/*.py")]
    offenders = {}
    for path in files:
        bad = hits(imports(path), {"pyinfra_cli", "pyinfra.context", "pyinfra.api.state.StateStage"})
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert not offenders, offenders
