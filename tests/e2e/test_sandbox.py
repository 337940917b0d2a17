"""End-to-end checks of the real-systemd sandbox hosts (mineru_fleet.sandbox).

Needs root and a controller where systemd-nspawn works.  Uses the running sandbox hosts if there
are any (and leaves them running); otherwise boots one and tears it down afterwards.  The `down`
test runs against a separate, isolated sandbox instance (own names, subnet, port and state dir)
so it never stops hosts other people are using.  Fast once the rootfs is cached (~5 s).

    uv run pytest -m e2e tests/e2e/test_sandbox.py -v     (from the repository root)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

from mineru_fleet import sandbox
from mineru_fleet.sandbox.image import cgroup_dirs
from mineru_fleet.sandbox.procs import pid_exists

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandbox hosts need root"),
]


@pytest.fixture(scope="module")
def sandbox_hosts():
    """Running default-instance sandbox hosts (booting one if none runs)."""
    cfg = sandbox.default_config()
    started_here = not sandbox.running_hosts(cfg)
    hosts = sandbox.up(1, cfg)  # idempotent: keeps running hosts, returns all of them
    yield hosts
    if started_here:
        sandbox.down(cfg)


@pytest.fixture(scope="module")
def host(sandbox_hosts):
    """The first sandbox host."""
    return sandbox_hosts[0]


def run(host, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a shell command as root on ``host`` over SSH."""
    return sandbox.ssh(host, command, check=check, timeout=60)


def test_pid1_is_systemd(host):
    assert run(host, "ps -o comm= -p 1").stdout.strip() == "systemd"
    assert run(host, "readlink -f /proc/1/exe").stdout.strip().endswith("/systemd")


def test_system_is_running(host):
    state = run(host, "systemctl is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded"), state
    assert run(host, "cat /etc/debian_version").stdout.startswith("13")


def test_systemd_analyze_verify(host):
    good = "[Unit]\nDescription=e2e\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
    bad = "[Unit]\nDescription=e2e\n[Service]\nExecStart=relative/path\n"
    d = f"/tmp/mf-e2e-{uuid.uuid4().hex[:8]}"
    cmd = (f"mkdir -p {d} && printf %s {shlex.quote(good)} > {d}/good.service && "
           f"printf %s {shlex.quote(bad)} > {d}/bad.service && "
           f"systemd-analyze verify {d}/good.service; echo rc_good=$?; "
           f"systemd-analyze verify {d}/bad.service; echo rc_bad=$?; rm -rf {d}")
    out = run(host, cmd, check=False).stdout
    assert "rc_good=0" in out, out
    assert "rc_bad=0" not in out, out  # verify really checks something


def test_host_fetches_from_controller_file_server(host):
    sub = sandbox.serve_dir() / "_e2e"
    sub.mkdir(exist_ok=True)
    name = f"probe-{uuid.uuid4().hex}.txt"
    payload = f"hello from the controller {name}\n"
    (sub / name).write_text(payload)
    try:
        url = f"{host.file_server_url}_e2e/{name}"
        assert url.startswith(f"http://{host.controller_ip}:")
        assert run(host, f"curl -fsS --max-time 5 {url}").stdout == payload
        listing = run(host, f"curl -fsS --max-time 5 {host.file_server_url}_e2e/").stdout
        assert f'href="{name}"' in listing  # directory listing usable as pip --find-links
    finally:
        (sub / name).unlink()
        try:
            sub.rmdir()
        except OSError:
            pass


def _mounted(path: Path) -> bool:
    return f" {path} " in Path("/proc/self/mounts").read_text()


def test_down_removes_everything_it_started(tmp_path, sandbox_hosts):
    """up + down on an isolated instance: no process, mount, cgroup, veth or file is left."""
    default = sandbox.default_config()
    cfg = sandbox.SandboxConfig(repo=default.repo, prefix="mfx", net_prefix="192.168.251",
                                port=8781, run_name="run-e2e",
                                inventory_path=tmp_path / "inventory_e2e.py")
    sandbox.down(cfg)  # leftovers of an interrupted earlier run
    (h,) = sandbox.up(1, cfg)
    d = cfg.run / h.name
    sup = int((d / "supervisor.pid").read_text())
    fs = int((cfg.run / "fileserver.pid").read_text())
    cgroups = cgroup_dirs(h.name)
    pids = {"nspawn": h.nspawn_pid, "init": h.leader_pid, "supervisor": sup, "fileserver": fs}
    assert all(Path(f"/proc/{p}").exists() for p in pids.values()), pids
    assert _mounted(d / "root")
    assert cgroups and all(c.is_dir() for c in cgroups)
    assert Path(f"/sys/class/net/ve-{h.name}").exists()
    assert cfg.inventory.is_file() and (cfg.run / "ssh_config").is_file()
    assert sandbox.ssh(h, "systemctl is-system-running", config=cfg,
                       check=False).stdout.strip() in ("running", "degraded")

    sandbox.down(cfg)

    alive = {k: p for k, p in pids.items() if pid_exists(p)}
    assert not alive, f"still running: {alive}"
    assert not _mounted(d / "root")
    assert not any(c.exists() for c in cgroups)
    assert not Path(f"/sys/class/net/ve-{h.name}").exists()
    assert not cfg.inventory.exists()
    assert not cfg.run.exists()
    # the default instance is untouched
    for other in sandbox_hosts:
        assert run(other, "systemctl is-system-running", check=False).stdout.strip() in (
            "running", "degraded")
