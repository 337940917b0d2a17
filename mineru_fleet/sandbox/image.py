"""The host image: controller prerequisites, the Debian 13 rootfs (mmdebstrap, built once) and the shared base dir."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from mineru_fleet.sandbox.config import BASE_PACKAGES, CGROUP_PARENT, DISABLED_UNITS, HOST_TOOLS, MASKED_UNITS, SUITE, SandboxConfig, SandboxError, VARIANT, default_config, log
from mineru_fleet.sandbox.procs import run, tail


def require_root() -> None:
    """Refuse to run unprivileged (nspawn, mounts, cgroups and veths all need root)."""
    if os.geteuid() != 0:
        raise SandboxError(
            "the sandbox needs root (systemd-nspawn, overlay mounts, cgroups, veth links): "
            "run it as root, e.g. `sudo -E uv run mineru-fleet sandbox up`")


def ensure_host_deps() -> None:
    """Install the controller tools (systemd-container, mmdebstrap, openssh-client, iproute2)
    with ``apt-get --no-install-recommends`` if any is missing.

    No recommends: systemd-container recommends libnss-mymachines, which edits the controller's
    /etc/nsswitch.conf.
    """
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise SandboxError(f"missing controller packages {missing} and no apt-get to install them;"
                           " install them by hand (Debian/Ubuntu package names)")
    t0 = time.monotonic()
    log.info("installing controller packages: %s", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-q"], env=env, timeout=600)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env,
             timeout=900)
    except SandboxError as e:
        raise SandboxError(f"could not install {missing}: {e}\nfix: make the Debian mirror in "
                           "/etc/apt/sources.list* reachable, or install them by hand with "
                           "`apt-get install --no-install-recommends ...`") from e
    log.info("controller packages installed in %.1fs", time.monotonic() - t0)


def check_kernel_support() -> None:
    """overlayfs and a writable cgroup hierarchy are required for nspawn containers here."""
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise SandboxError("the kernel has no overlayfs (`overlay` not in /proc/filesystems)"
                               "; load it with `modprobe overlay` or use a kernel that has it")
    for d in cgroup_dirs("probe"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            d.rmdir()
        except OSError as e:
            raise SandboxError(
                f"cannot create cgroup {d} ({e}): systemd-nspawn is not possible here. The "
                "controller needs a writable cgroup filesystem (a privileged container or a VM; "
                "on a hybrid/legacy host /sys/fs/cgroup/systemd and /sys/fs/cgroup/unified)") from e


def cgroup_dirs(name: str) -> list[Path]:
    """Per-container cgroup dirs: one on a pure cgroup v2 host, name=systemd + unified on a
    hybrid/legacy one.  Each container must start from its own cgroup, else their systemds
    fight over the same ``payload/system.slice/*`` cgroups."""
    root = Path("/sys/fs/cgroup")
    try:
        fstype = run(["stat", "-fc", "%T", str(root)]).stdout.strip()
    except SandboxError:
        fstype = ""
    if fstype == "cgroup2fs":
        return [root / CGROUP_PARENT / name]
    return [root / h / CGROUP_PARENT / name for h in ("systemd", "unified") if (root / h).is_dir()]


def debian_mirror() -> str:
    """The Debian mirror from the controller's apt sources (``MINERU_FLEET_SANDBOX_MIRROR``
    overrides).  Security/updates/backports URIs are skipped; the first plain one wins."""
    env = os.environ.get("MINERU_FLEET_SANDBOX_MIRROR")
    if env:
        return env
    uris: list[str] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in f.read_text(errors="replace").splitlines():
            if line.strip().lower().startswith("uris:"):
                uris += line.split(":", 1)[1].split()
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for f in lists:
        if f.is_file():
            for line in f.read_text(errors="replace").splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    uris.append(parts[1])
    for u in uris:
        if "security" not in u and re.search(r"/debian/?$", u):
            return u.rstrip("/")
    raise SandboxError("no Debian mirror found in /etc/apt/sources.list*; set "
                       "MINERU_FLEET_SANDBOX_MIRROR=http://deb.debian.org/debian (or your mirror)")


def rootfs_tarball(config: SandboxConfig | None = None) -> Path:
    """Cache path of the rootfs tarball; the name changes when suite or packages change."""
    cfg = config or default_config()
    h = hashlib.sha256(f"{SUITE}|{VARIANT}|{','.join(BASE_PACKAGES)}".encode()).hexdigest()[:10]
    return cfg.cache / f"rootfs-{SUITE}-{h}.tar"


def build_rootfs(config: SandboxConfig | None = None) -> Path:
    """Build the Debian 13 rootfs tarball with mmdebstrap unless it is cached; return its path."""
    cfg = config or default_config()
    tar = rootfs_tarball(cfg)
    if tar.is_file():
        log.info("cached rootfs: %s", tar)
        return tar
    cfg.cache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    tmp = tar.with_name(tar.stem + ".partial.tar")
    logfile = cfg.cache / "mmdebstrap.log"
    cmd = ["mmdebstrap", f"--variant={VARIANT}", "--format=tar", "--mode=root",
           f"--include={','.join(BASE_PACKAGES)}", "--aptopt=Acquire::Retries \"3\"",
           SUITE, str(tmp), mirror]
    log.info("building %s rootfs from %s (once; 1-3 min) -> %s", SUITE, mirror, tar.name)
    t0 = time.monotonic()
    with open(logfile, "w") as out:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                            ).returncode
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise SandboxError(
            f"mmdebstrap failed (rc={rc}) building the {SUITE} rootfs from {mirror}.\n"
            f"--- last lines of {logfile} ---\n{tail(logfile, 30)}\n---\n"
            "fix: check that the mirror serves `trixie` and is reachable (`apt-get update`), "
            "that there is ~2 GB free under .sandbox/ and /tmp, or point "
            "MINERU_FLEET_SANDBOX_MIRROR at another Debian mirror")
    tmp.rename(tar)
    log.info("rootfs built in %.1fs (%.0f MB)", time.monotonic() - t0, tar.stat().st_size / 1e6)
    return tar


def ensure_ssh_key(config: SandboxConfig | None = None) -> Path:
    """The client key authorized for root in every container (created once)."""
    cfg = config or default_config()
    cfg.home.mkdir(parents=True, exist_ok=True)
    if not cfg.key.is_file():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mineru-fleet-sandbox",
              "-f", str(cfg.key)])
    return cfg.key


def _base_stamp(cfg: SandboxConfig, tar: Path) -> str:
    """What the prepared base dir was made from (tarball + authorized key)."""
    pub = Path(str(cfg.key) + ".pub").read_text().strip()
    return f"{tar.name} {hashlib.sha256(pub.encode()).hexdigest()[:16]}\n"


def _any_running(cfg: SandboxConfig) -> bool:
    """True if any container of any instance uses the base dir (overlay mounted)."""
    return str(cfg.base) in Path("/proc/self/mounts").read_text().replace("\\040", " ")


def prepare_base(config: SandboxConfig | None = None) -> Path:
    """Extract the rootfs tarball into ``.sandbox/base`` and make it a test-host template:
    root's authorized_keys, systemd-networkd enabled, noisy timers masked, empty machine-id
    (fresh per boot), no SSH host keys (generated per container)."""
    cfg = config or default_config()
    tar = build_rootfs(cfg)
    ensure_ssh_key(cfg)
    stamp = cfg.base / ".ready"
    want = _base_stamp(cfg, tar)
    if stamp.is_file() and stamp.read_text() == want:
        return cfg.base
    if _any_running(cfg):
        raise SandboxError(f"{cfg.base} is outdated but running containers use it: "
                           "run `mineru-fleet sandbox down` first")
    t0 = time.monotonic()
    if cfg.base.exists():
        shutil.rmtree(cfg.base)
    cfg.base.mkdir(parents=True)
    run(["tar", "-C", str(cfg.base), "--numeric-owner", "--xattrs", "--xattrs-include=*",
          "-xpf", str(tar)], timeout=600)
    b = cfg.base
    if not (b / "usr/lib/systemd/systemd-networkd").exists():
        raise SandboxError(f"{tar} has no systemd-networkd; delete it so it is rebuilt")
    ssh_dir = b / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(str(cfg.key) + ".pub", ssh_dir / "authorized_keys")
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    run(["chroot", str(b), "systemctl", "enable", "systemd-networkd.service"])
    run(["chroot", str(b), "systemctl", "mask", *MASKED_UNITS], check=False)
    run(["chroot", str(b), "systemctl", "disable", *DISABLED_UNITS], check=False)
    (b / "etc/machine-id").write_text("")  # fresh machine-id on every boot
    for k in (b / "etc/ssh").glob("ssh_host_*"):
        k.unlink()
    stamp.write_text(want)
    log.info("base prepared in %.1fs (%s)", time.monotonic() - t0, b)
    return b
