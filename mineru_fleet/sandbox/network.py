"""Networking: each container's veth /30, SSH to the hosts, and the client files (ssh_config, testinfra hosts, pyinfra inventory)."""

from __future__ import annotations

import contextlib
import json
import pprint
import subprocess
import time
from pathlib import Path

from mineru_fleet.sandbox.config import INVENTORY_MARKER, ROUTES_MARKER, SandboxConfig, SandboxError, SandboxHost, default_config, host_dir
from mineru_fleet.sandbox.procs import run


def host_data(config: SandboxConfig, host: SandboxHost) -> dict:
    """pyinfra host data for a sandbox host."""
    if host.balancer:  # HAProxy only: no wheels, no API of its own
        return {
            "ssh_user": "root",
            "ssh_key": str(config.key),
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
            "controller_ip": host.controller_ip,
            "sandbox_name": host.name,
        }
    return {
        "ssh_user": "root",
        "ssh_key": str(config.key),
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "controller_ip": host.controller_ip,
        "mineru_wheel_find_links": f"{host.file_server_url}wheels/cpu/",
        # only the controller (tests, clients) may reach the API: rendered as IPAddressAllow (not enforced in nspawn)
        "mineru_client_networks": [host.controller_ip],
        "sandbox_name": host.name,
    }


def write_client_files(cfg: SandboxConfig, hosts: list[SandboxHost]) -> None:
    """Write run/ssh_config, run/testinfra_hosts.txt, run/hosts.json and the pyinfra inventory."""
    cfg.run.mkdir(parents=True, exist_ok=True)
    cfg.control_dir.mkdir(mode=0o700, exist_ok=True)
    lines = []
    for h in hosts:
        lines += [f"Host {h.name}", f"  HostName {h.ip}", ""]
    lines += [
        f"Host {cfg.prefix}* {cfg.net_prefix}.*",
        "  User root", f"  IdentityFile {cfg.key}", "  IdentitiesOnly yes",
        "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  LogLevel ERROR",
        "  BatchMode yes", "  ConnectTimeout 5",
        "  ControlMaster auto", f"  ControlPath {cfg.control_dir}/%C", "  ControlPersist 120", "",
    ]
    cfg.ssh_config.write_text("\n".join(lines))
    (cfg.run / "testinfra_hosts.txt").write_text(
        ",".join(f"ssh://root@{h.ip}" for h in hosts if not h.balancer) + "\n")
    (cfg.run / "hosts.json").write_text(json.dumps([h.as_dict() for h in hosts], indent=2) + "\n")
    entries = [(h.ip, host_data(cfg, h)) for h in hosts if not h.balancer]
    balancers = [(h.ip, host_data(cfg, h)) for h in hosts if h.balancer]
    cfg.inventory.parent.mkdir(parents=True, exist_ok=True)
    cfg.inventory.write_text(
        f"{INVENTORY_MARKER} (`mineru-fleet sandbox up`); removed by `sandbox down`.\n"
        "# pyinfra inventory: group `sandbox`, hosts as (name, data) tuples; host name = IP.\n"
        "# Usage: uv run pyinfra inventory/sandbox.py DEPLOY.py\n\n"
        f"sandbox = {pprint.pformat(entries, width=100, sort_dicts=False)}\n"
        + (f"\n# the HAProxy host (`sandbox up N --balancer`): the balancer role only\n"
           f"balancers = {pprint.pformat(balancers, width=100, sort_dicts=False)}\n" if balancers else ""))


def remove_client_files(cfg: SandboxConfig) -> None:
    for name in ("ssh_config", "testinfra_hosts.txt", "hosts.json"):
        (cfg.run / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        cfg.control_dir.rmdir()  # empty once close_control_masters ran
    inv = cfg.inventory
    if inv.is_file() and inv.read_text().startswith(INVENTORY_MARKER):
        inv.unlink()


def close_control_masters(cfg: SandboxConfig) -> None:
    """Close ssh ControlMaster connections opened through run/ssh_config."""
    for s in cfg.control_dir.iterdir() if cfg.control_dir.is_dir() else []:
        subprocess.run(["ssh", "-o", f"ControlPath={s}", "-O", "exit", "dummy"],
                       capture_output=True, timeout=10)
        s.unlink(missing_ok=True)


def ssh_argv(host: SandboxHost | str, *command: str,
             config: SandboxConfig | None = None) -> list[str]:
    """argv to run ``command`` on a sandbox host (name or IP) through run/ssh_config."""
    cfg = config or default_config()
    target = host.ip if isinstance(host, SandboxHost) else host
    return ["ssh", "-F", str(cfg.ssh_config), target, *command]


def ssh(host: SandboxHost | str, command: str, *, config: SandboxConfig | None = None,
        check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell command on a sandbox host as root; returns the CompletedProcess (text)."""
    cp = subprocess.run(ssh_argv(host, command, config=config), capture_output=True, text=True,
                        timeout=timeout)
    if check and cp.returncode != 0:
        raise SandboxError(f"ssh {host}: `{command}` rc={cp.returncode}: {cp.stderr.strip()}")
    return cp




def configure_veth(machine: str, host_cidr: str, timeout: float = 10.0) -> None:
    """Give the controller side of the container's veth its address and bring it up."""
    ifname = f"ve-{machine}"
    end = time.monotonic() + timeout
    while not Path(f"/sys/class/net/{ifname}").exists():
        if time.monotonic() > end:
            print(f"[supervisor] {ifname} did not appear", flush=True)
            return
        time.sleep(0.05)
    run(["ip", "addr", "replace", host_cidr, "dev", ifname], check=False)
    run(["ip", "link", "set", ifname, "up"], check=False)


# --------------------------------------------------------------------------------------------
# the balancer host: the containers reach each other through the controller
#
# Each container has its own /30 to the controller and no gateway. With a balancer host, the
# controller forwards between this instance's veths (net.ipv4.conf.ve-<name>.forwarding=1, set per
# interface: the controller's other interfaces and other instances are untouched), the balancer gets
# a route to the instance's /24 and each serving host a route back to the balancer, both via their
# controller address (live, and as a systemd-networkd drop-in so they survive a reboot of the host).

ROUTE_DROPIN = "etc/systemd/network/10-host0.network.d/50-mineru-fleet-balancer.conf"


def set_forwarding(machine: str, on: bool) -> None:
    """Forward (or not) what the container ``machine`` sends through its veth (per interface)."""
    path = Path(f"/proc/sys/net/ipv4/conf/ve-{machine}/forwarding")
    if path.exists():
        path.write_text("1\n" if on else "0\n")


def _route(cfg: SandboxConfig, host: SandboxHost, balancer: SandboxHost) -> str:
    return f"{cfg.net_prefix}.0/24" if host.balancer else f"{balancer.ip}/32"


def _in_netns(host: SandboxHost, *argv: str) -> None:
    if host.leader_pid:
        run(["nsenter", "-t", str(host.leader_pid), "-n", *argv], check=False)


def connect_balancer(cfg: SandboxConfig, hosts: list[SandboxHost]) -> None:
    """Let the balancer among ``hosts`` and the serving hosts reach each other (idempotent)."""
    balancer = next((h for h in hosts if h.balancer), None)
    if balancer is None:
        return
    (cfg.run / ROUTES_MARKER).touch()
    for h in hosts:
        set_forwarding(h.name, True)
        dest = _route(cfg, h, balancer)
        dropin = host_dir(cfg, h.name) / "root" / ROUTE_DROPIN
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Route]\nDestination={dest}\nGateway={h.controller_ip}\n")
        _in_netns(h, "ip", "route", "replace", dest, "via", h.controller_ip)


def disconnect_balancer(cfg: SandboxConfig, hosts: list[SandboxHost], balancer: SandboxHost) -> None:
    """Undo ``connect_balancer`` on the serving ``hosts`` (the balancer itself is being stopped)."""
    for h in hosts:
        dest = _route(cfg, h, balancer)
        (host_dir(cfg, h.name) / "root" / ROUTE_DROPIN).unlink(missing_ok=True)
        _in_netns(h, "ip", "route", "del", dest, "via", h.controller_ip)
        set_forwarding(h.name, False)
    (cfg.run / ROUTES_MARKER).unlink(missing_ok=True)
