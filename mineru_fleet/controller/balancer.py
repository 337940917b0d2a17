"""HAProxy's runtime API on the balancer hosts, from the controller, through pyinfra.

Connects to the hosts of the inventory group ``balancers`` with pyinfra's public API (``Inventory``,
``Config``, ``State``, ``connect_all``, then ``host.run_shell_command``), as ``gather.py`` does, and
talks to HAProxy's admin socket (``/run/haproxy/admin.sock``, root only) with socat there. Every
word of every command is shell-quoted (``haproxy.runtime_shell``).

Example::

    from mineru_fleet.controller import balancer
    from mineru_fleet.core.rollout import Server

    with balancer.Runtime("inventory/production.py") as lb:
        lb.set_state(Server("gpu-1", 0), "drain")
        lb.wait_until(Server("gpu-1", 0), lambda row: row.idle, timeout=600)   # scur = qcur = 0
        ...                                                                     # restart it
        lb.set_state(Server("gpu-1", 0), "ready")
        lb.wait_until(Server("gpu-1", 0), lambda row: row.status == "UP", timeout=120)

With several balancers, a state change goes to each of them and ``wait_until`` waits until the
condition holds on each; ``show_stat`` reads one (the only one, or the one named).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mineru_fleet.controller.gather import load_inventory_hosts
from mineru_fleet.core import haproxy
from mineru_fleet.core.rollout import Server


class BalancerAPIError(RuntimeError):
    """A balancer cannot be reached or refused a runtime command; the message names the host and the command."""


def balancer_entries(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inventory's hosts (``load_inventory_hosts``) that run HAProxy (``haproxy.roles_of``)."""
    counts = Counter(g for h in hosts for g in set(h["groups"]))  # a group of every host says nothing (gather.serving_hosts)
    universal = {g for g, c in counts.items() if c == len(hosts)}
    return [h for h in hosts if haproxy.roles_of(h["groups"], universal)[1]]


class Runtime:
    """The connected balancer hosts of an inventory (all of them, or the one named ``only``)."""

    def __init__(self, inventory_arg: str, only: str | None = None, timeout_s: float = 60):
        from pyinfra.api import Config, Inventory, State
        from pyinfra.api.connect import connect_all
        from pyinfra.api.exceptions import PyinfraError

        chosen = [h for h in balancer_entries(load_inventory_hosts(inventory_arg)) if only is None or h["name"] == only]
        if not chosen:
            raise BalancerAPIError(f"inventory {inventory_arg!r} has no balancer host"
                                   + (f" named {only!r}" if only else f" (group {haproxy.GROUP!r})"))
        self.timeout_s = timeout_s
        self.inventory = Inventory(([(h["name"], h["data"]) for h in chosen], {}))
        self.state = State(self.inventory, Config(), check_for_changes=False)
        try:
            connect_all(self.state)
        except PyinfraError:
            pass
        self.hosts = list(self.inventory)
        down = [h.name for h in self.hosts if not h.connected]
        if down:
            self.close()
            raise BalancerAPIError(f"balancer(s) {', '.join(down)} unreachable (check the address, SSH user and key)")

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self.hosts:
            if h.connected:
                h.disconnect()

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def command(self, command: str, only: str | None = None) -> dict[str, str]:
        """Send one runtime command to each balancer (or the one named); ``{host: answer}``."""
        from pyinfra.api import StringCommand

        shell = haproxy.runtime_shell(command)
        out: dict[str, str] = {}
        for h in self.hosts:
            if only is not None and h.name != only:
                continue
            ok, result = h.run_shell_command(StringCommand(shell), _timeout=self.timeout_s)
            if not ok:
                raise BalancerAPIError(f"{h.name}: `{command}` failed: {(result.stderr or result.stdout).strip()[:500]}")
            err = haproxy.runtime_error(result.stdout)
            if err:
                raise BalancerAPIError(f"{h.name}: HAProxy refused `{command}`: {err[:500]}")
            out[h.name] = result.stdout
        return out

    def show_stat(self, only: str | None = None) -> list[haproxy.StatRow]:
        """The rows of ``show stat`` on one balancer (the only one, or ``only``)."""
        if only is None and len(self.hosts) > 1:
            raise BalancerAPIError(f"{len(self.hosts)} balancers ({', '.join(self.names)}): name the one to read")
        name = only or self.hosts[0].name
        try:
            return haproxy.parse_show_stat(self.command("show stat", only=name)[name])
        except haproxy.HAProxyError as e:
            raise BalancerAPIError(f"{name}: {e}") from None

    def server_rows(self, server: Server) -> dict[str, haproxy.StatRow]:
        """``{balancer: row}`` of ``server`` on each balancer; BalancerAPIError when one has no such server."""
        name = haproxy.server_name(server)
        out = {}
        for b in self.names:
            rows = haproxy.servers_of(self.show_stat(only=b))
            if name not in rows:
                raise BalancerAPIError(f"{b}: no server {name} ({server}) in backend {haproxy.BACKEND}: deploy the balancer role")
            out[b] = rows[name]
        return out

    def set_state(self, server: Server, state: str) -> None:
        """``set server mineru/<name> state drain|maint|ready`` on every balancer."""
        try:
            cmd = haproxy.set_state_command(haproxy.server_name(server), state)
        except haproxy.HAProxyError as e:
            raise BalancerAPIError(str(e)) from None
        self.server_rows(server)  # a server HAProxy does not know is an error, not a silent no-op
        self.command(cmd)

    def wait_until(self, server: Server, predicate: Callable[[haproxy.StatRow], bool], timeout: float,
                   interval: float = 0.5) -> dict[str, haproxy.StatRow]:
        """Poll ``show stat`` until ``predicate(row)`` holds for ``server`` on every balancer; the rows then.
        BalancerAPIError with the last rows when ``timeout`` seconds pass first."""
        end = time.monotonic() + timeout
        while True:
            rows = self.server_rows(server)
            if all(predicate(r) for r in rows.values()):
                return rows
            if time.monotonic() >= end:
                seen = "; ".join(f"{b}: status={r.status} scur={r.scur} qcur={r.qcur} check={r.check_status}" for b, r in rows.items())
                raise BalancerAPIError(f"{server}: condition not reached within {timeout:.0f}s ({seen})")
            time.sleep(interval)


def _with(inventory: str | Runtime, fn: Callable[[Runtime], Any]) -> Any:
    if isinstance(inventory, Runtime):
        return fn(inventory)
    with Runtime(inventory) as rt:
        return fn(rt)


def show_stat(inventory: str | Runtime, balancer: str | None = None) -> list[haproxy.StatRow]:
    """``show stat`` of the inventory's balancer (an inventory file, or an open ``Runtime``)."""
    return _with(inventory, lambda rt: rt.show_stat(only=balancer))


def set_state(inventory: str | Runtime, server: Server, state: str) -> None:
    """Put ``server`` in ``state`` (drain, maint, ready) on every balancer of the inventory."""
    _with(inventory, lambda rt: rt.set_state(server, state))


def wait_until(inventory: str | Runtime, server: Server, predicate: Callable[[haproxy.StatRow], bool],
               timeout: float, interval: float = 0.5) -> dict[str, haproxy.StatRow]:
    """Wait until ``predicate(row)`` holds for ``server`` on every balancer of the inventory."""
    return _with(inventory, lambda rt: rt.wait_until(server, predicate, timeout, interval))
