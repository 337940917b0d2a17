"""Host lifecycle: boot containers (systemd-nspawn under a supervisor), wait until ready, up / status / down."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from mineru_fleet.sandbox.config import BALANCER_INDEX, BOOT_TIMEOUT_S, MAX_HOSTS, NSPAWN_REBOOT_RC, ROUTES_MARKER, SSH_TIMEOUT_S, STOP_TIMEOUT_S, SandboxConfig, SandboxError, SandboxHost, host_dir, host_dirs, host_for, default_config, log
from mineru_fleet.sandbox.fileserver import fileserver_state, http_ok, start_file_server, stop_file_server
from mineru_fleet.sandbox.image import cgroup_dirs, check_kernel_support, require_root, ensure_host_deps, prepare_base
from mineru_fleet.sandbox.network import close_control_masters, configure_veth, connect_balancer, disconnect_balancer, remove_client_files, set_forwarding, write_client_files
from mineru_fleet.sandbox.procs import disown, ensure_logging, leader_of, locked, pid_exists, pid_is, read_pid, run, send_signal, spawn_detached, tail, wait_gone, pid_in_other_pidns


def _umount(path: Path) -> None:
    """Unmount ``path`` if it is a mount point (lazy as a last resort)."""
    if not os.path.ismount(path):
        return
    for _ in range(20):
        if run(["umount", str(path)], check=False).returncode == 0:
            return
        time.sleep(0.25)
    run(["umount", "-l", str(path)], check=False)


def _supervisor_alive(d: Path) -> int | None:
    """PID of the container's supervisor if it is running."""
    pid = read_pid(d / "supervisor.pid")
    return pid if pid_is(pid, "supervise") else None


def _start_container(cfg: SandboxConfig, host: SandboxHost) -> None:
    """Mount a fresh overlay for ``host``, personalize it and start its supervisor."""
    d = host_dir(cfg, host.name)
    _umount(d / "root")
    if d.exists():
        shutil.rmtree(d)
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={cfg.base},upperdir={d / 'upper'},workdir={d / 'work'}", str(d / "root")])
    r = d / "root"
    (r / "etc/hostname").write_text(host.name + "\n")
    with open(r / "etc/hosts", "a") as fh:
        fh.write(f"127.0.1.1\t{host.name}\n")
    net = r / "etc/systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    # no Gateway: the test hosts talk only to the controller (air-gapped fleet)
    (net / "10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={host.ip}/30\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    for kind in ("ed25519", "ecdsa"):  # per-container host keys (RSA skipped: 0.6 s of CPU each)
        run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{host.name}",
              "-f", str(r / f"etc/ssh/ssh_host_{kind}_key")])
    (d / "t0").write_text(f"{time.time()}\n")
    proc = spawn_detached(["supervise", "--dir", str(d), "--machine", host.name,
                            "--host-ip", f"{host.controller_ip}/30"], d / "supervisor.log", cfg)
    (d / "supervisor.pid").write_text(f"{proc.pid}\n")
    disown(proc)


def _failure_hint(d: Path) -> str:
    return (f"--- {d / 'console.log'} ---\n{tail(d / 'console.log')}\n"
            f"--- {d / 'supervisor.log'} ---\n{tail(d / 'supervisor.log', 10)}\n"
            "fix: systemd-nspawn needs root with CAP_SYS_ADMIN, a writable cgroupfs and overlayfs "
            "(a privileged container or a VM); see the console log above")


def _wait_nspawn(cfg: SandboxConfig, host: SandboxHost, timeout: float = 15.0) -> None:
    """Wait for the supervisor's current systemd-nspawn and the container's PID 1."""
    d = host_dir(cfg, host.name)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = read_pid(d / "nspawn.pid")
        if pid_is(pid, "systemd-nspawn"):
            leader = leader_of(pid)
            if leader:
                host.nspawn_pid, host.leader_pid = pid, leader
                (d / "leader.pid").write_text(f"{leader}\n")
                return
        if not pid_exists(read_pid(d / "supervisor.pid")):
            break
        time.sleep(0.05)
    raise SandboxError(f"{host.name}: systemd-nspawn did not start\n{_failure_hint(d)}")


def _system_state(leader: int | None, wait: float | None = None) -> str:
    """``systemctl is-system-running`` inside the container (via nsenter into its PID 1)."""
    if not leader:
        return "stopped"
    cmd = ["nsenter", "-t", str(leader), "-a", "systemctl", "is-system-running"]
    if wait:
        cmd.append("--wait")
    try:
        cp = run(cmd, check=False, timeout=wait or 10)
    except subprocess.TimeoutExpired:
        return "timeout"
    return cp.stdout.strip() or f"unknown ({cp.stderr.strip()[:80]})"


def _ssh_opts(cfg: SandboxConfig, connect_timeout: int = 3) -> list[str]:
    """ssh options without connection reuse (for probes)."""
    return ["-i", str(cfg.key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", "ControlMaster=no",
            "-o", "ControlPath=none"]


def _ssh_ok(cfg: SandboxConfig, ip: str) -> bool:
    try:
        return run(["ssh", *_ssh_opts(cfg), f"root@{ip}", "true"], check=False,
                    timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait_ready(cfg: SandboxConfig, host: SandboxHost, fresh: bool = True) -> None:
    """Wait for running/degraded and for SSH; fill in state, ssh_ok, boot_seconds
    (``fresh``: booted by this call, so the timings mean something)."""
    d = host_dir(cfg, host.name)
    _wait_nspawn(cfg, host)
    end = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        # "offline": PID 1 is not (yet) systemd or its private socket is not up yet
        host.state = _system_state(host.leader_pid, wait=max(1.0, end - time.monotonic()))
        if host.state not in ("offline", "timeout") and not host.state.startswith("unknown"):
            break
        if time.monotonic() > end:
            break
        time.sleep(0.05)
        _wait_nspawn(cfg, host)  # the container may have been restarted meanwhile
    try:
        t0 = float((d / "t0").read_text())
    except (OSError, ValueError):
        t0 = time.time()
    t_state = time.time() - t0
    if host.state not in ("running", "degraded"):
        raise SandboxError(f"{host.name}: systemd reached state {host.state!r}, not "
                           f"running/degraded, within {BOOT_TIMEOUT_S:.0f}s\n{_failure_hint(d)}")
    if host.state == "degraded":
        failed = run(["nsenter", "-t", str(host.leader_pid), "-a", "systemctl", "--failed",
                       "--plain", "--no-legend"], check=False, timeout=10).stdout.split("\n")
        log.info("%s is degraded; failed units: %s", host.name,
                 ", ".join(line.split()[0] for line in failed if line.strip()) or "?")
    end = time.monotonic() + SSH_TIMEOUT_S
    while not (ok := _ssh_ok(cfg, host.ip)) and time.monotonic() < end:
        time.sleep(0.2)
    host.ssh_ok = ok
    if fresh:
        host.boot_seconds = round(time.time() - t0, 2)
        log.info("%s (%s) state=%s after %.2fs, ssh=%s after %.2fs", host.name, host.ip,
                 host.state, t_state, "ok" if ok else "FAIL", host.boot_seconds)
    else:
        log.info("%s (%s) kept: state=%s, ssh=%s", host.name, host.ip, host.state,
                 "ok" if ok else "FAIL")
    if not ok:
        raise SandboxError(f"{host.name}: SSH to root@{host.ip} does not answer after "
                           f"{SSH_TIMEOUT_S:.0f}s (state {host.state}); try "
                           f"`nsenter -t {host.leader_pid} -a journalctl -u ssh`")


def running_hosts(config: SandboxConfig | None = None) -> list[SandboxHost]:
    """Containers of this instance whose supervisor is alive (no probing beyond PIDs)."""
    cfg = config or default_config()
    out = []
    for i, d in host_dirs(cfg):
        if _supervisor_alive(d):
            h = host_for(cfg, i)
            pid = read_pid(d / "nspawn.pid")
            if pid_is(pid, "systemd-nspawn"):
                h.nspawn_pid, h.leader_pid = pid, leader_of(pid)
            out.append(h)
    return out


def _parallel(calls: list) -> None:
    """Run independent per-host steps concurrently; re-raise the first failure."""
    if not calls:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(calls))) as ex:
        for fut in [ex.submit(c) for c in calls]:
            fut.result()


def up(n: int = 1, config: SandboxConfig | None = None, balancer: bool = False) -> list[SandboxHost]:
    """Boot containers 1..n (keeping any already running), start the file server, write the
    client files and the pyinfra inventory.  Returns all running hosts of this instance.

    ``balancer``: also boot the HAProxy host (container ``BALANCER_INDEX``, inventory group
    ``balancers``) and let it and the serving hosts reach each other through the controller."""
    ensure_logging()
    cfg = config or default_config()
    top = BALANCER_INDEX - 1 if balancer else MAX_HOSTS
    if not 1 <= n <= top:
        raise SandboxError(f"N must be between 1 and {top}")
    require_root()
    t_all = time.monotonic()
    with locked(cfg):
        ensure_host_deps()
        check_kernel_support()
        prepare_base(cfg)
        cfg.run.mkdir(parents=True, exist_ok=True)
        wanted = set(range(1, n + 1)) | ({BALANCER_INDEX} if balancer else set())
        running = {h.index for h in running_hosts(cfg)}
        for i in sorted(running):
            log.info("%s already running", host_for(cfg, i).name)
        hosts = [host_for(cfg, i) for i in sorted(wanted | running)]
        _parallel([functools.partial(_start_container, cfg, h) for h in hosts
                   if h.index not in running])
        try:
            _parallel([functools.partial(_wait_ready, cfg, h, h.index not in running)
                       for h in hosts])
        finally:
            live = [h for h in hosts if _supervisor_alive(host_dir(cfg, h.name))]
            write_client_files(cfg, live)
        connect_balancer(cfg, hosts)
        start_file_server(cfg, [h.controller_ip for h in hosts])
    log.info("%d host(s) up in %.2fs: %s", len(hosts), time.monotonic() - t_all,
             ", ".join(f"{h.name}={h.ip}" for h in hosts))
    return hosts


def status(config: SandboxConfig | None = None) -> list[dict]:
    """One dict per container (name, ip, controller_ip, nspawn_pid, leader_pid, state, ssh_ok,
    file_server_url, kind="host") plus one for the file server (kind="file-server")."""
    cfg = config or default_config()
    out: list[dict] = []
    for i, d in host_dirs(cfg):
        h = host_for(cfg, i)
        if _supervisor_alive(d):
            pid = read_pid(d / "nspawn.pid")
            if pid_is(pid, "systemd-nspawn"):
                h.nspawn_pid, h.leader_pid = pid, leader_of(pid)
                h.state = _system_state(h.leader_pid)
                h.ssh_ok = _ssh_ok(cfg, h.ip)
            else:
                h.state = "restarting"
        else:
            h.state = "stopped"
        out.append({"kind": "host", **h.as_dict()})
    pid, meta = fileserver_state(cfg)
    out.append({
        "kind": "file-server",
        "name": "file-server",
        "pid": pid,
        "port": cfg.port,
        "binds": meta.get("binds", []),
        "serve_dir": str(cfg.serve),
        "http_ok": bool(pid) and http_ok(f"http://127.0.0.1:{cfg.port}/"),
    })
    return out


def _stop_container(cfg: SandboxConfig, d: Path) -> None:
    """Wait for a container asked to power off; escalate to its PID 1, then nspawn; clean up."""
    name = d.name
    pid = read_pid(d / "nspawn.pid")
    if pid_is(pid, "systemd-nspawn") and not wait_gone(pid, "systemd-nspawn", STOP_TIMEOUT_S):
        # SIGKILL the container's PID 1 first (takes its whole PID namespace down); killing only
        # nspawn would leave the container's systemd orphaned and running.
        leader = read_pid(d / "leader.pid")
        if leader and pid_in_other_pidns(leader):
            log.info("%s did not power off, SIGKILL container init %d", name, leader)
            send_signal(leader, signal.SIGKILL)
        if not wait_gone(pid, "systemd-nspawn", 5):
            log.info("%s: SIGKILL systemd-nspawn %d", name, pid)
            send_signal(pid, signal.SIGKILL)
            wait_gone(pid, "systemd-nspawn", 5)
    sup = read_pid(d / "supervisor.pid")
    if pid_is(sup, "supervise") and not wait_gone(sup, "supervise", 5):
        log.info("%s: supervisor %d still alive, SIGTERM", name, sup)
        send_signal(sup, signal.SIGTERM)
        wait_gone(sup, "supervise", 5)
    _umount(d / "root")
    for cg in cgroup_dirs(name):
        _rmdir_tree(cg)
    shutil.rmtree(d, ignore_errors=True)




def _rmdir_tree(root: Path) -> None:
    """Remove a cgroup directory tree bottom-up (cgroupfs dirs are removed with rmdir)."""
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def down(config: SandboxConfig | None = None) -> None:
    """Stop everything ``up`` started for this instance, by recorded PID: power the containers
    off (SIGTERM to nspawn), escalate if needed, stop the file server, unmount the overlays,
    remove cgroup dirs, per-host dirs, client files and the generated inventory.  The rootfs
    cache, base dir and SSH key are kept so the next ``up`` is fast."""
    ensure_logging()
    cfg = config or default_config()
    require_root()
    t0 = time.monotonic()
    with locked(cfg):
        close_control_masters(cfg)
        dirs = [d for _, d in host_dirs(cfg)]
        for d in dirs:  # 1) ask all of them for an orderly poweroff at once
            (d / "stopping").touch()
            pid = read_pid(d / "nspawn.pid")
            if pid_is(pid, "systemd-nspawn"):
                leader = leader_of(pid)
                if leader:
                    (d / "leader.pid").write_text(f"{leader}\n")
                send_signal(pid, signal.SIGTERM)  # nspawn forwards it as an orderly poweroff request
        for d in dirs:  # 2) wait, escalate, clean up
            _stop_container(cfg, d)
        stop_file_server(cfg)
        remove_client_files(cfg)
        (cfg.run / ROUTES_MARKER).unlink(missing_ok=True)
        for cg in cgroup_dirs("x"):
            with contextlib.suppress(OSError):
                cg.parent.rmdir()  # only if no other instance uses it
        with contextlib.suppress(OSError):
            cfg.run.rmdir() if not any(cfg.run.iterdir()) else None
    log.info("stopped %d host(s) in %.2fs", len(dirs), time.monotonic() - t0)


def stop_balancer(config: SandboxConfig | None = None) -> bool:
    """Stop only the balancer host (``up(..., balancer=True)``): the serving hosts keep running, lose
    their route to it, and the inventory lists them alone again.  False when none was running."""
    ensure_logging()
    cfg = config or default_config()
    require_root()
    with locked(cfg):
        hosts = running_hosts(cfg)
        bal = next((h for h in hosts if h.balancer), None)
        d = host_dir(cfg, host_for(cfg, BALANCER_INDEX).name)
        if bal is None and not d.exists():
            return False
        rest = [h for h in hosts if not h.balancer]
        disconnect_balancer(cfg, rest, bal or host_for(cfg, BALANCER_INDEX))
        (d / "stopping").touch()
        pid = read_pid(d / "nspawn.pid")
        if pid_is(pid, "systemd-nspawn"):
            leader = leader_of(pid)
            if leader:
                (d / "leader.pid").write_text(f"{leader}\n")
            send_signal(pid, signal.SIGTERM)
        _stop_container(cfg, d)
        write_client_files(cfg, rest)
    log.info("balancer host stopped; %d host(s) left", len(rest))
    return True


def _join_cgroups(machine: str) -> None:
    """Move this process into the container's own cgroup dir(s) before starting nspawn."""
    for cg in cgroup_dirs(machine):
        cg.mkdir(parents=True, exist_ok=True)
        (cg / "cgroup.procs").write_text(f"{os.getpid()}\n")


def supervise(d: Path, machine: str, host_cidr: str) -> int:
    """Run systemd-nspawn for one container and restart it after an in-container reboot
    (nspawn exits 133).  SIGTERM to the supervisor powers the container off."""
    _join_cgroups(machine)
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")  # systemd 257 needs cgroup v2
    state: dict = {"proc": None}

    def on_term(_sig, _frm):
        (d / "stopping").touch()
        if state["proc"] and state["proc"].poll() is None:
            state["proc"].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    while True:
        with open(d / "console.log", "ab") as console:
            # --register=no --keep-unit: no host systemd/machined/system bus here
            proc = subprocess.Popen(
                ["systemd-nspawn", "--boot", f"--directory={d / 'root'}", f"--machine={machine}",
                 "--register=no", "--keep-unit", "--network-veth", "--link-journal=no",
                 "--console=read-only", "--quiet"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env)
        state["proc"] = proc
        (d / "nspawn.pid.tmp").write_text(f"{proc.pid}\n")
        os.replace(d / "nspawn.pid.tmp", d / "nspawn.pid")
        configure_veth(machine, host_cidr)
        if (d.parent / ROUTES_MARKER).exists():  # a balancer is up: a rebooted host's new veth forwards again
            set_forwarding(machine, True)
        rc = proc.wait()
        print(f"[supervisor {time.strftime('%T')}] nspawn {proc.pid} exited rc={rc}", flush=True)
        if rc == NSPAWN_REBOOT_RC and not (d / "stopping").exists():
            continue
        return 0
