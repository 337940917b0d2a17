"""A planted ModelScope token appears nowhere but in its own file (issue 10).

The sandbox hub makes the model private (only the token may read it), so a deploy that places a new revision
must really carry the token, in controller mode (the controller's client) and in host mode (the token file sent
to the host, 0600 from the first byte, removed after the download). While the deploys run, the process tables
of the controller and the host are watched (every command line and environment); afterwards the deploys'
output (``--diff -vvv``), the host's files and journal and the controller's files are searched for it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mineru_fleet import sandbox
from mineru_fleet.sandbox import modelhub, quickstart
from mineru_fleet.sandbox.network import ssh_argv

pytestmark = pytest.mark.e2e
DEPLOY_MODEL_ONLY = "tests/e2e/deploy_model_only.py"
#: controller folders that hold no file a deploy writes (the hub is the remote party: it keeps the token by design)
#: (.sandbox/run holds the containers' root file systems: the hosts are searched from inside, below)
NOT_OURS = (".git", ".venv", ".sandbox/serve", ".sandbox/base", ".sandbox/cache/rootfs", ".sandbox/hub",
            ".sandbox/client", ".sandbox/models", ".sandbox/run")
HOST_DIRS = "/etc /var /tmp /root /home /run /opt/mineru-fleet"


class ProcessWatch(threading.Thread):
    """Polls every command line and environment on the controller and on one sandbox host for ``needle``."""

    def __init__(self, needle: str, host_ip: str):
        super().__init__(daemon=True)
        self.needle, self.host_ip = needle.encode(), host_ip
        self.hits: list[str] = []
        self.polls = 0
        self.stop = threading.Event()

    def _local(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            for what in ("cmdline", "environ"):
                try:
                    if self.needle in Path(f"/proc/{pid}/{what}").read_bytes():
                        self.hits.append(f"controller pid {pid} {what}")
                except OSError:
                    pass

    def _remote(self) -> None:
        # the token goes in on stdin (-f -), so this command's own command line does not carry it
        cmd = "grep -lF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null; true"
        r = subprocess.run(ssh_argv(self.host_ip, cmd), input=self.needle, capture_output=True, timeout=30)
        self.hits += [f"host {line}" for line in r.stdout.decode().split() if line and "/self/" not in line]

    def run(self) -> None:
        while not self.stop.is_set():
            self._local()
            self._remote()
            self.polls += 1
            self.stop.wait(0.3)


def _controller_files_with(needle: bytes, roots: list[Path], skip: set[Path]) -> list[str]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = [n for n in dirnames if not any((d / n) == (quickstart.REPO / x) for x in NOT_OURS)]
            for n in filenames:
                f = d / n
                if f in skip or not f.is_file() or f.is_symlink():
                    continue
                try:
                    if needle in f.read_bytes():
                        found.append(str(f))
                except OSError:
                    pass
    return found


def test_a_planted_token_appears_nowhere_but_its_file(hosts, tmp_path):
    hst = hosts[0]
    cfg = sandbox.default_config()
    token = "mftok" + secrets.token_hex(20)
    token_file = tmp_path / "modelscope-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, token.encode() + b"\n")
    os.close(fd)
    hub_root = quickstart.HUB_HOME / "root"
    revs = {"controller": "v1.0.2-private-c", "host": "v1.0.2-private-h"}
    for rev in revs.values():
        modelhub.publish(hub_root, quickstart.HUB_MODEL_ID, rev, quickstart.MODEL_DIR)
    parent = f"/var/lib/mineru-fleet/models/{quickstart.HUB_MODEL_ID}"
    written: list[Path] = []

    def inventory(mode: str, with_token: bool = True) -> Path:
        data = {**sandbox.host_data(cfg, hst), "mineru_model_revision": revs[mode], "mineru_model_fetch_mode": mode,
                "mineru_model_cache_dir": str(tmp_path / "cache")}
        if mode == "host":  # the host reaches the hub at its controller address (127.0.0.1 is the host itself)
            data["mineru_modelscope_host_domain"] = f"{hst.controller_ip}:{quickstart.hub_port()}"
        if with_token:
            data["mineru_modelscope_token_file"] = str(token_file)
        # next to the other inventories, so pyinfra reads inventory/group_data/sandbox.py for it
        inv = quickstart.REPO / "inventory" / f"sandbox_secret_{mode}{'' if with_token else '_no_token'}.py"
        written.append(inv)
        inv.write_text(f"sandbox = [({hst.ip!r}, {data!r})]\n")
        return inv

    def deploy(inv: Path) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "MODELSCOPE_API_TOKEN"}
        return subprocess.run([sys.executable, "-m", "pyinfra", str(inv), DEPLOY_MODEL_ONLY, "-y", "--diff", "-vvv"],
                              cwd=quickstart.REPO, capture_output=True, text=True, timeout=900, env=env)

    modelhub.set_private(hub_root, quickstart.HUB_MODEL_ID, token)
    watch = ProcessWatch(token, hst.ip)
    outputs = []
    try:
        # control: without the token the private model is refused, so the runs below really carry it
        r = deploy(inventory("controller", with_token=False))
        assert r.returncode != 0 and "private" in (r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]
        outputs.append(r.stdout + r.stderr)
        watch.start()
        for mode in ("controller", "host"):
            r = deploy(inventory(mode))
            outputs.append(r.stdout + r.stderr)
            assert r.returncode == 0, f"{mode} mode with the token failed:\n" + (r.stdout + r.stderr)[-4000:]
            installed = sandbox.ssh(hst.ip, f"test -f {parent}/{revs[mode]}/config.json && echo yes", config=cfg,
                                    check=False).stdout.strip()
            assert installed == "yes", f"{mode} mode did not place the private revision"
    finally:
        watch.stop.set()
        if watch.is_alive():
            watch.join(timeout=60)
        modelhub.set_private(hub_root, quickstart.HUB_MODEL_ID, None)
        for inv in written:
            inv.unlink(missing_ok=True)
    assert watch.polls >= 3, "the process tables were not watched while the deploys ran"
    assert watch.hits == [], f"the token was in a process table: {watch.hits[:5]}"
    for out in outputs:
        assert token not in out, "the token is in the deploy's output"
    # the host: no file (journal files included) and no journal line holds it; the token file is gone again
    r = subprocess.run(ssh_argv(hst.ip, f"grep -rlF --exclude-dir=releases -f - {HOST_DIRS} 2>/dev/null; true"),
                       input=token.encode(), capture_output=True, timeout=300)
    host_files = [ln for ln in r.stdout.decode().splitlines() if ln.startswith("/")]
    assert host_files == [], f"the token is in host files: {host_files}"
    journal = subprocess.run(ssh_argv(hst.ip, "journalctl --no-pager -o cat | grep -cF -f -; true"), input=token.encode(),
                             capture_output=True, timeout=120).stdout.decode().strip()
    assert journal == "0", f"the token is in {journal} journal line(s) of the host"
    assert sandbox.ssh(hst.ip, "ls /etc/mineru-fleet/private/", config=cfg, check=False).stdout.strip() == "", \
        "the token file was not removed from the host after the download"
    # the controller: nothing but the token file itself (the checkout, the model cache, modelscope's own folders)
    home = Path.home()
    found = _controller_files_with(token.encode(), [quickstart.REPO, tmp_path, home / ".modelscope", home / ".cache" / "modelscope"],
                                   skip={token_file})
    assert found == [], f"the token is in controller files: {found}"
    assert not list(Path("/tmp").glob("ms-cred-*")), "a credentials folder of the client was left behind"
    # tidy: the two private revisions off the hub and the host (not served: the served one is untouched)
    for rev in revs.values():
        shutil.rmtree(hub_root / quickstart.HUB_MODEL_ID / rev, ignore_errors=True)
        sandbox.ssh(hst.ip, f"rm -rf {parent}/{rev}", config=cfg, check=False)
