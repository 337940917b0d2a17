"""Verify role: the readiness gate after a (re)start, per server.

Active, port listening, ``/v1/models`` lists the served model and one chat completion succeeds,
within a retry budget; otherwise the host fails with the journal's last lines. Runs only when the
service role (re)started something, so an unchanged host stays unchanged.
"""

from __future__ import annotations

import shlex

from pyinfra.api import deploy
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import paths

READY_TIMEOUT_S = 600


def gate_command(name: str, port: int, settings: Settings) -> str:
    """Shell for one server's readiness gate (exit 1 and print the journal when not ready)."""
    q = shlex.quote
    p = paths(settings)
    unit = q(f"mineru-vllm@{name}.service")
    return (
        f"systemctl is-active --quiet {unit} && "
        f"{q(p['current'] + '/venv/bin/python')} {q(p['bin_dir'] + '/mineru-fleet-ready')}"
        f" --url {q(f'http://127.0.0.1:{int(port)}')} --chat --timeout {READY_TIMEOUT_S}"
        f" || {{ echo {q(f'mineru-vllm@{name}.service is not ready; its journal:')}; systemctl status --no-pager {unit} | head -5; "
        f"journalctl -u {unit} -n 40 --no-pager; exit 1; }}"
    )


@deploy("Verify")
def verify(plan: Plan, settings: Settings, started: list) -> None:
    for sv in plan.servers:
        server.shell(
            name=f"Readiness gate of server {sv.name} (port {sv.port})",
            commands=[gate_command(sv.name, sv.port, settings)],
            _if=any_changed(*started),
        )
