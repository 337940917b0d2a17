"""Gather preflight facts from live hosts through pyinfra (SSH, @local, ...), no deploy needed.

Example::

    >>> results = gather("@local")  # doctest: +SKIP
    >>> results["@local"].files["os.txt"][:11]  # doctest: +SKIP
    'PRETTY_NAME'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from mineru_fleet.core.settings import DEFAULTS, var


class GatherError(RuntimeError):
    pass


@dataclass
class Gathered:
    host: str
    files: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def host_paths(data: dict[str, Any]) -> list[str]:
    """The paths whose free space the plan checks: mineru_install_dir and mineru_state_dir."""
    return [str(data.get(var(k), DEFAULTS[k])) for k in ("install_dir", "state_dir")]


def load_inventory(inventory_arg: str) -> list[tuple[str, dict[str, Any]]]:
    """``(host name, data)`` of every host of an inventory file, host list or ``@local``.

    pyinfra's own CLI loads it (``pyinfra --json INVENTORY debug-inventory``: group_data, host data
    and all), so inventories behave exactly as they do for ``pyinfra INVENTORY deploy.py``.
    """
    return [(h["name"], h["data"]) for h in load_inventory_hosts(inventory_arg)]


def load_inventory_hosts(inventory_arg: str) -> list[dict[str, Any]]:
    """Like ``load_inventory``, with the groups: ``[{"name", "groups", "data"}]``."""
    if inventory_arg.endswith(".py") and not os.path.isfile(inventory_arg):
        raise GatherError(f"no inventory file {inventory_arg!r} (give an inventory file, a host name or @local)")
    cmd = [sys.executable, "-m", "pyinfra", "--json", inventory_arg, "debug-inventory"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd(), stdin=subprocess.DEVNULL)
    try:
        hosts = json.loads(r.stdout) if r.returncode == 0 else None
    except ValueError:
        hosts = None
    if not isinstance(hosts, list):
        why = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and not ln.startswith("-->")]
        raise GatherError(f"cannot load inventory {inventory_arg!r}: {' '.join(why[-3:]) or 'pyinfra printed nothing'}")
    if not hosts:
        raise GatherError(f"inventory {inventory_arg!r} names no host")
    return [{"name": h["name"], "groups": list(h.get("groups") or []), "data": dict(h.get("data") or {})} for h in hosts]


def serving_hosts(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hosts (``load_inventory_hosts``) that serve: all but those only in the group ``balancers``."""
    from collections import Counter

    from mineru_fleet.core.haproxy import roles_of

    counts = Counter(g for h in hosts for g in set(h["groups"]))
    universal = {g for g, c in counts.items() if c == len(hosts)}
    return [h for h in hosts if roles_of(h["groups"], universal)[0]]


def host_user(data: dict[str, Any]) -> str:
    """The service account whose existing entry the preflight reads (a name load_settings accepts, else the default)."""
    from mineru_fleet.core.settings import USER_NAME

    user = data.get(var("service_user"), DEFAULTS["service_user"])
    return user if isinstance(user, str) and USER_NAME.fullmatch(user) else DEFAULTS["service_user"]


def _for_each_host(inventory_arg: str, override_data: dict[str, Any] | None, collect) -> dict[str, Gathered]:
    """Load an inventory, connect to every host and call ``collect(host, data) -> Gathered`` on each
    reachable one. Unreachable hosts get ``error`` set. pyinfra's public API only: ``Inventory``,
    ``Config``, ``State``, ``connect_all`` and ``host.get_fact``."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError

    hosts = [(h["name"], {**h["data"], **(override_data or {})}) for h in serving_hosts(load_inventory_hosts(inventory_arg))]
    if not hosts:
        raise GatherError(f"inventory {inventory_arg!r} has only balancer hosts (group balancers): no server to plan")
    inventory = Inventory((hosts, {}))
    state = State(inventory, Config(), check_for_changes=False)
    try:
        connect_all(state)
    except PyinfraError:  # "No hosts remaining!": every host unreachable, reported per host below
        pass
    results: dict[str, Gathered] = {}
    for host in inventory:
        data = dict(host.data.dict())
        if not host.connected:
            results[host.name] = Gathered(host.name, data=data, error="unreachable: could not connect (check the address, SSH user and key)")
            continue
        results[host.name] = collect(host, data)
    return results


def gather(inventory_arg: str, override_data: dict[str, Any] | None = None) -> dict[str, Gathered]:
    """Connect to every host of an inventory (file, host list or @local) and run ``PreflightFiles``.

    Unreachable hosts come back with ``error`` set instead of raising.
    """
    from mineru_fleet.controller.facts import PreflightFiles

    def collect(host, data: dict) -> Gathered:
        files = host.get_fact(PreflightFiles, paths=host_paths(data), user=host_user(data))
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
        files = dict(host.get_fact(PreflightFiles, paths=host_paths(data), user=host_user(data)) or {})
        j = host.get_fact(UnitJournal, unit=unit) or {}
        files["journal"] = "\n".join(j.get("lines") or []) + ("\n" if j.get("lines") else "")
        data["_journal"] = {k: j.get(k) for k in ("unit", "invocation", "active")}
        return Gathered(host.name, files=files, data=data)

    return _for_each_host(inventory_arg, override_data, collect)
