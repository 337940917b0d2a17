"""Balancer role: HAProxy from the OS packages in front of every planned vLLM server of the fleet.

Runs on the hosts of the inventory group ``balancers``. The backend has one server per planned
server of every serving host of the inventory (planned with the preflight's own code, from each
host's facts), named ``<inventory host>_<N>`` for ``mineru-vllm@N`` (``mineru_fleet.core.haproxy``)::

    backend mineru          balance leastconn, GET /health checks, retries 3 + redispatch
        server mf1_0 192.168.250.6:30000 check
        server mf2_0 192.168.250.10:30000 check

A new config is checked with ``haproxy -c`` before it replaces the live one, and applied with
``systemctl reload haproxy`` (the master process and its listening sockets stay: no connection
refused, requests in flight finish on the old worker); the servers' runtime state (drain, maint)
is saved first and loaded by the new worker. Nothing is reloaded when the config is unchanged.
The runtime API is ``/run/haproxy/admin.sock`` (mode 0600, root): ``mineru_fleet/controller/balancer.py``.

Example (deploy.py)::

    from roles.balancer import balancer
    balancer()
"""

from __future__ import annotations

import hashlib
import io
import shlex

from pyinfra import host, inventory
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Sha256File
from pyinfra.operations import apt, server, systemd

from mineru_fleet.core import haproxy
from roles.preflight import host_roles, host_settings, plan_host

PACKAGES = ("haproxy", "socat")


class BalancerError(PyinfraError):
    """The balancer cannot be configured as the inventory asks; the message says why and how to fix it."""


def fleet_backends() -> list[haproxy.BackendServer]:
    """Every planned server of every serving host of the inventory, as the backend's servers."""
    entries = []
    for h in inventory:
        if not host_roles(h)[0]:
            continue
        settings = host_settings(h)
        try:
            address = haproxy.backend_address(h.name, h.data.dict(), settings)
        except haproxy.HAProxyError as e:
            raise BalancerError(str(e)) from None
        for sv in plan_host(h).servers:
            entries.append((h.name, int(sv.name), address, sv.port))
    try:
        return haproxy.backend_servers(entries)
    except haproxy.HAProxyError as e:
        raise BalancerError(f"{host.name}: {e}") from None


@operation()
def checked_config(content: str, dest: str = haproxy.CONFIG_PATH):
    """Put ``content`` at ``dest`` only after ``haproxy -c`` accepted it: upload beside it, check, rename.

    No change when the live file already has this content; a config HAProxy refuses stops the
    deploy with HAProxy's messages and leaves the live file as it was."""
    if host.get_fact(Sha256File, path=dest) == hashlib.sha256(content.encode()).hexdigest():
        host.noop(f"{dest} is up to date")
        return
    q = shlex.quote
    new = f"{dest}.mineru-fleet-new"
    yield FileUploadCommand(io.BytesIO(content.encode()), new, remote_temp_filename=host.get_temp_filename(new))
    yield StringCommand(f"chown root:root {q(new)} && chmod 644 {q(new)}")
    yield StringCommand(f"out=$(haproxy -c -f {q(new)} 2>&1) || {{ printf '%s\\n' \"$out\" | grep -v NOTICE >&2; "
                        f"rm -f {q(new)}; echo {q('haproxy -c refused the new config; the live one is unchanged')} >&2; exit 1; }}")
    yield StringCommand(f"mv -f {q(new)} {q(dest)}")


@deploy("Balancer")
def balancer() -> None:
    """HAProxy in front of the fleet's servers on this host (a host of the group ``balancers``)."""
    settings = host_settings()
    backends = fleet_backends()
    serves, _ = host_roles()
    if serves:
        taken = {sv.port for sv in plan_host(host).servers}
        if settings.balancer_port in taken:
            raise BalancerError(f"{host.name}: mineru_balancer_port {settings.balancer_port} is the port of a server of this "
                                "host: give the balancer another port")
    try:
        content = haproxy.render_config(settings, backends)
    except haproxy.HAProxyError as e:
        raise BalancerError(f"{host.name}: {e}") from None

    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in PACKAGES if p not in installed]
    if missing:  # no apt-get update when they are there (air-gapped hosts have HAProxy from their image)
        apt.packages(name=f"OS packages {', '.join(missing)}", packages=missing, update=True)
    config = checked_config(name=f"HAProxy config, {len(backends)} server(s) (haproxy -c before it replaces the live one)",
                            content=content)
    server.shell(name="Reload HAProxy (config changed; the servers' drain/maint state carried over)",
                 commands=[haproxy.save_state_and_reload_shell()], _if=config.did_change)
    systemd.service(name="HAProxy enabled and running", service="haproxy.service", running=True, enabled=True)
