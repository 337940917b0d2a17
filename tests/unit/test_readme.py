"""Every `mineru-fleet` command the README prints runs as printed from a clone.

The commands are taken from the README's code blocks (``$ uv run mineru-fleet ...`` examples and
the quick start), continuation lines joined. Those that need no host run here, exactly as written,
from the repository root, and must exit 0 with no traceback. Those that need a host (``sandbox``,
``--host``) are exercised by the end-to-end suite on sandbox hosts.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import REPO

NEEDS_HOST = re.compile(r"\bsandbox\b|--host\b")


def readme_commands() -> list[str]:
    """``uv run mineru-fleet ...`` commands in the README's indented code blocks."""
    lines = (REPO / "README.md").read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^ {4}(?:\$ )?(uv run mineru-fleet .*)$", lines[i])
        i += 1
        if not m:
            continue
        cmd = m.group(1)
        while cmd.rstrip().endswith("\\") and i < len(lines):
            cmd = cmd.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        out.append(re.sub(r"\s+#.*$", "", cmd).strip())
    return out


COMMANDS = readme_commands()
RUNNABLE = [c for c in COMMANDS if not NEEDS_HOST.search(c)]


def test_readme_has_runnable_and_host_commands():
    assert len(RUNNABLE) >= 4, RUNNABLE
    assert "uv run mineru-fleet sandbox run" in COMMANDS  # the main job (run by tests/e2e)


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_command_runs_as_printed(cmd):
    assert shutil.which("uv"), "uv is not on PATH (the README's commands start with `uv run`)"
    r = subprocess.run(shlex.split(cmd), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.strip(), "printed nothing"
