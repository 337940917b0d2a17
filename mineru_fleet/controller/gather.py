"""Gather preflight facts from live hosts through pyinfra (SSH, @local, ...), no deploy needed.

Example::

    >>> results = gather("@local")  # doctest: +SKIP
    >>> results["@local"].files["os.txt"][:11]  # doctest: +SKIP
    'PRETTY_NAME'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mineru_fleet.core.settings import DEFAULTS


class GatherError(RuntimeError):
    pass


@dataclass
class Gathered:
    host: str
    files: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def host_paths(data: dict[str, Any]) -> list[str]:
    """The paths whose free space the plan checks: install_dir and state_dir."""
    return [data.get("install_dir", DEFAULTS["install_dir"]), data.get("state_dir", DEFAULTS["state_dir"])]


def _for_each_host(inventory_arg: str, override_data: dict[str, Any] | None, collect) -> dict[str, Gathered]:
    """Load an inventory, connect to every host and call ``collect(host, data) -> Gathered`` on each
    reachable one (inside its pyinfra host context). Unreachable hosts get ``error`` set."""
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    state = State(check_for_changes=False)
    ctx_state.set(state)
    config = Config()
    ctx_config.set(config)
    try:
        inventory = make_inventory(inventory_arg, cwd=os.getcwd(), override_data=override_data)
    except Exception as e:  # a broken inventory file: say which and why, no traceback
        raise GatherError(f"cannot load inventory {inventory_arg!r}: {e}") from None
    ctx_inventory.set(inventory)
    state.init(inventory, config)
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    results: dict[str, Gathered] = {}
    for host in inventory:
        data = dict(host.data.dict()) if hasattr(host.data, "dict") else {}
        if not host.connected:
            results[host.name] = Gathered(host.name, data=data, error="unreachable: could not connect (check the address, SSH user and key)")
            continue
        with ctx_host.use(host):
            results[host.name] = collect(host, data)
    return results


def gather(inventory_arg: str, override_data: dict[str, Any] | None = None) -> dict[str, Gathered]:
    """Connect to every host of an inventory (file, host list or @local) and run ``PreflightFiles``.

    Unreachable hosts come back with ``error`` set instead of raising.
    """
    from mineru_fleet.controller.facts import PreflightFiles

    def collect(host, data: dict) -> Gathered:
        files = host.get_fact(PreflightFiles, paths=host_paths(data))
        if not files or "os.txt" not in files:
            return Gathered(host.name, data=data, error="the preflight fact returned no output")
        return Gathered(host.name, files=files, data=data)

    return _for_each_host(inventory_arg, override_data, collect)


def gather_journals(inventory_arg: str, unit: str, override_data: dict[str, Any] | None = None) -> dict[str, Gathered]:
    """Like ``gather``, plus each host's journal of ``unit`` since its last start (``files["journal"]``,
    ``data["_journal"]`` with the invocation id and state). The preflight files come along so the
    caller can plan the host and say which findings the plan handles.
    """
    from mineru_fleet.controller.facts import PreflightFiles
    from mineru_fleet.controller.journal import UnitJournal

    def collect(host, data: dict) -> Gathered:
        files = dict(host.get_fact(PreflightFiles, paths=host_paths(data)) or {})
        j = host.get_fact(UnitJournal, unit=unit) or {}
        files["journal"] = "\n".join(j.get("lines") or []) + ("\n" if j.get("lines") else "")
        data["_journal"] = {k: j.get(k) for k in ("unit", "invocation", "active")}
        return Gathered(host.name, files=files, data=data)

    return _for_each_host(inventory_arg, override_data, collect)
