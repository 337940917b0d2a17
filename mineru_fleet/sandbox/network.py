"""Networking: each container's veth /30, SSH to the hosts, and the client files (ssh_config, testinfra hosts, pyinfra inventory)."""

from __future__ import annotations

import contextlib
import json
import pprint
import subprocess
import time
from pathlib import Path

from mineru_fleet.sandbox.config import INVENTORY_MARKER, SandboxConfig, SandboxError, SandboxHost, default_config
from mineru_fleet.sandbox.procs import run


def host_data(config: SandboxConfig, host: SandboxHost) -> dict:
    """pyinfra host data for a sandbox host."""
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
        ",".join(f"ssh://root@{h.ip}" for h in hosts) + "\n")
    (cfg.run / "hosts.json").write_text(json.dumps([h.as_dict() for h in hosts], indent=2) + "\n")
    entries = [(h.ip, host_data(cfg, h)) for h in hosts]
    cfg.inventory.parent.mkdir(parents=True, exist_ok=True)
    cfg.inventory.write_text(
        f"{INVENTORY_MARKER} (`mineru-fleet sandbox up`); removed by `sandbox down`.\n"
        "# pyinfra inventory: group `sandbox`, hosts as (name, data) tuples; host name = IP.\n"
        "# Usage: uv run pyinfra inventory/sandbox.py DEPLOY.py\n\n"
        f"sandbox = {pprint.pformat(entries, width=100, sort_dicts=False)}\n")


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
