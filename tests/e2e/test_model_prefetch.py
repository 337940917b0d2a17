"""The model role end to end: the real modelscope client against the local HTTPS hub
(mineru_fleet/sandbox/modelhub.py), onto 3 fresh sandbox hosts of their own instance (mp1..mp3), with
only the preflight and model roles (tests/e2e/deploy_model_only.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mineru_fleet.core.settings import to_inventory
from mineru_fleet.sandbox import modelhub
from mineru_fleet import sandbox
from mineru_fleet.sandbox import tinymodel
from mineru_fleet.sandbox.quickstart import MODEL_DIR, REPO

pytestmark = pytest.mark.e2e

MODEL = "mineru-fleet/tiny-qwen2vl"
REV = "v1.0.0"
REV2 = "v2.0.0"
STATE = "/var/lib/mineru-fleet"
DEPLOY = "tests/e2e/deploy_model_only.py"


def instance() -> sandbox.SandboxConfig:
    """The model tests' own sandbox instance (mp1..mp3 on 192.168.253.0/24, file server port 8782);
    ``MINERU_FLEET_MODEL_SANDBOX_PREFIX`` / ``_NET`` / ``_PORT`` move it (a second checkout on the same machine)."""
    env = os.environ
    return sandbox.SandboxConfig(repo=REPO, prefix=env.get("MINERU_FLEET_MODEL_SANDBOX_PREFIX", "mp"),
                                 net_prefix=env.get("MINERU_FLEET_MODEL_SANDBOX_NET", "192.168.253"),
                                 port=int(env.get("MINERU_FLEET_MODEL_SANDBOX_PORT", "8782")), run_name="run-model",
                                 inventory_path=REPO / "inventory" / "sandbox_model.py")


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end suite needs root (systemd-nspawn sandbox hosts)")
    cfg = instance()
    hs = sandbox.up(3, cfg)[:3]
    for h in hs:  # a fresh start: no model on the hosts
        sandbox.ssh(h.ip, f"rm -rf {STATE}/models {STATE}-hostmode /mnt/small", config=cfg)
    yield hs
    if not os.environ.get("MINERU_FLEET_KEEP_SANDBOX"):
        sandbox.down(cfg)


@pytest.fixture(scope="module")
def hub(hosts, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    if not (MODEL_DIR / "config.json").is_file():
        tinymodel.make_tiny_qwen2vl(MODEL_DIR)
    modelhub.publish(root / "root", MODEL, REV, MODEL_DIR)
    modelhub.publish(root / "root", MODEL, "master", MODEL_DIR)
    v2 = root / "v2src"
    tinymodel.make_tiny_qwen2vl(v2, seed=1)
    modelhub.publish(root / "root", MODEL, REV2, v2)
    with modelhub.Hub(root / "root", root / "certs", ["127.0.0.1", *[h.controller_ip for h in hosts]]) as h:
        yield h


def model_size(rev_dir: Path) -> int:
    return sum(p.stat().st_size for p in rev_dir.rglob("*") if p.is_file())


def write_inventory(path: Path, hosts, hub, **data) -> Path:
    cfg = instance()
    entries = []
    for h in hosts:
        d = {**sandbox.host_data(cfg, h), "profile": "cpu", "model_id": MODEL, "model_revision": REV,
             "modelscope_domain": hub.domain("127.0.0.1"), "modelscope_ca_bundle": str(hub.ca),
             "model_cache_dir": str(path.parent / "cache"), "model_free_space_margin_mib": 1}
        d.update(data)
        if d.get("model_fetch_mode") == "host":
            d.setdefault("modelscope_host_domain", hub.domain(h.controller_ip))
        entries.append((h.ip, to_inventory(d)))
    path.write_text(f"hosts = {entries!r}\n")
    return path


def deploy(inventory: Path, check: bool = True) -> tuple[int, str, int]:
    r = subprocess.run([sys.executable, "-m", "pyinfra", str(inventory), DEPLOY, "-y"], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "MODELSCOPE_LOG_LEVEL": "40"})
    out = r.stdout + r.stderr
    if check:
        assert r.returncode == 0, out[-5000:]
    m = re.search(r"Grand total\s+(\d+)\s+(\S+)", out)
    changed = 0 if not m or m.group(2) == "-" else int(m.group(2))
    return r.returncode, out, changed


def host_files(h, rev=REV) -> dict[str, str]:
    cp = sandbox.ssh(h.ip, f"cd {STATE}/models/{MODEL}/{rev} && sha256sum $(find . -type f ! -name '.mineru-fleet-*')",
                     config=instance(), check=False)
    return {ln.split("  ", 1)[1].removeprefix("./"): ln.split()[0] for ln in cp.stdout.splitlines()}


def expected(rev_dir: Path) -> dict[str, str]:
    return {p.relative_to(rev_dir).as_posix(): modelhub.sha256_file(p) for p in rev_dir.rglob("*") if p.is_file()}


def test_clean_download_three_hosts_hub_traffic_once(hosts, hub, tmp_path):
    hub.state.reset()
    _, out, changed = deploy(write_inventory(tmp_path / "inv.py", hosts, hub))
    size = model_size(hub.root / MODEL / REV)
    assert hub.state.stats()["file_bytes"] == size, "controller mode: the hub serves the model exactly once"
    want = expected(hub.root / MODEL / REV)
    for h in hosts:
        assert host_files(h) == want
        assert sandbox.ssh(h.ip, f"ls -A {STATE}/models/{MODEL}", config=instance()).stdout.split() == [
            f".{REV}.manifest.json", REV]
    assert changed > 0


def test_rerun_transfers_nothing_and_changes_nothing(hosts, hub, tmp_path):
    inv = write_inventory(tmp_path / "inv.py", hosts, hub)
    deploy(inv)
    hub.state.reset()
    _, out, changed = deploy(inv)
    assert changed == 0, out[-3000:]
    assert hub.state.stats()["file_bytes"] == 0
    assert "with rsync" not in out


def test_corrupt_host_file_is_repaired(hosts, hub, tmp_path):
    inv = write_inventory(tmp_path / "inv.py", hosts, hub)
    deploy(inv)
    h = hosts[1]
    sandbox.ssh(h.ip, f"printf xx | dd of={STATE}/models/{MODEL}/{REV}/model.safetensors bs=1 seek=1000 conv=notrunc",
                config=instance())
    sandbox.ssh(h.ip, f"rm {STATE}/models/{MODEL}/{REV}/vocab.json", config=instance())
    assert host_files(h) != expected(hub.root / MODEL / REV)
    _, out, changed = deploy(inv)
    assert host_files(h) == expected(hub.root / MODEL / REV)
    (sent,) = [ln for ln in out.splitlines() if "with rsync:" in ln and "Starting operation" in ln]
    assert "model.safetensors" in sent and "vocab.json" in sent and "Send 2 model file(s)" in sent, sent
    assert "config.json" not in sent  # only the bad files travel


def check_lines(out: str, mode: str = "record") -> dict[str, str]:
    """Each host's "model check (MODE): ..." line from a deploy's output (the ModelState fact's own count)."""
    found = {}
    for ln in out.splitlines():
        m = re.search(r"(\S+): (model check \(%s\): .*)" % mode, ln)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def test_rerun_reads_the_record_and_hashes_nothing(hosts, hub, tmp_path):
    """A no-op run: every host's fact finds every file as recorded at install and hashes none (counted, not timed)."""
    inv = write_inventory(tmp_path / "inv.py", hosts, hub)
    deploy(inv)
    _, out, changed = deploy(inv)
    assert changed == 0, out[-3000:]
    n = len(expected(hub.root / MODEL / REV))
    assert check_lines(out) == {h.ip: f"model check (record): 0 of {n} file(s) hashed (0 B), record ok" for h in hosts}, out[-3000:]
    # the marker holds the record: one entry per file with its stat and SHA-256, and the SHA-256s are the hub's
    marker = json.loads(sandbox.ssh(hosts[0].ip, f"cat {STATE}/models/{MODEL}/{REV}/.mineru-fleet-verified",
                                    config=instance()).stdout)
    assert {e["path"]: e["sha256"] for e in marker["files"]} == expected(hub.root / MODEL / REV)
    assert all({"size", "mtime_ns", "ctime_ns", "inode"} <= e.keys() for e in marker["files"])


def test_in_place_rewrite_with_mtime_put_back_is_found_and_repaired(hosts, hub, tmp_path):
    """Same size, same mtime (touch -d the old one): the ctime differs, so that one file is hashed, found bad and sent."""
    inv = write_inventory(tmp_path / "inv.py", hosts, hub)
    deploy(inv)
    h = hosts[1]
    w = f"{STATE}/models/{MODEL}/{REV}/model.safetensors"
    before = sandbox.ssh(h.ip, f"stat -c '%s %Y %i' {w}; stat -c %y {w}", config=instance()).stdout.splitlines()
    sandbox.ssh(h.ip, f"printf xx | dd of={w} bs=1 seek=2000 conv=notrunc status=none && touch -d '{before[1]}' {w}",
                config=instance())
    after = sandbox.ssh(h.ip, f"stat -c '%s %Y %i' {w}; stat -c %y {w}", config=instance()).stdout.splitlines()
    assert after == before, "size, mtime (to the ns) and inode are as they were"
    assert host_files(h) != expected(hub.root / MODEL / REV)
    _, out, changed = deploy(inv)
    lines = check_lines(out)
    assert lines[h.ip].startswith("model check (record): 1 of "), lines
    assert all(lines[o.ip].startswith("model check (record): 0 of ") for o in hosts if o is not h), lines
    (sent,) = [ln for ln in out.splitlines() if "with rsync:" in ln and "Starting operation" in ln]
    assert "Send 1 model file(s)" in sent and "model.safetensors" in sent, sent
    assert host_files(h) == expected(hub.root / MODEL / REV)
    _, out, changed = deploy(inv)  # repaired and recorded: the next run is a no-op again
    assert changed == 0 and check_lines(out)[h.ip].startswith("model check (record): 0 of "), out[-3000:]


def test_full_mode_hashes_every_file(hosts, hub, tmp_path):
    inv = write_inventory(tmp_path / "inv.py", hosts[:1], hub, model_verify="full")
    deploy(inv)
    _, out, changed = deploy(inv)
    n = len(expected(hub.root / MODEL / REV))
    assert changed == 0
    size = sum(p.stat().st_size for p in (hub.root / MODEL / REV).rglob("*") if p.is_file())
    from mineru_fleet.controller.modelstore import human

    assert check_lines(out, "full") == {hosts[0].ip: f"model check (full): {n} of {n} file(s) hashed ({human(size)}), record ok"}


def test_a_touched_file_is_hashed_once_and_recorded_again(hosts, hub, tmp_path):
    """A file touched without a change: hashed, found good, its record written again (no restart, no transfer)."""
    inv = write_inventory(tmp_path / "inv.py", hosts[:1], hub)
    deploy(inv)
    h = hosts[0]
    sandbox.ssh(h.ip, f"touch {STATE}/models/{MODEL}/{REV}/config.json", config=instance())
    _, out, changed = deploy(inv)
    assert check_lines(out)[h.ip].startswith("model check (record): 1 of "), out[-3000:]
    assert "Record the verified files of" in out and "with rsync" not in out
    _, out, changed = deploy(inv)
    assert changed == 0 and check_lines(out)[h.ip].startswith("model check (record): 0 of "), out[-3000:]


def test_wrong_revision_fails_in_preflight_before_any_change(hosts, hub, tmp_path):
    rc, out, _ = deploy(write_inventory(tmp_path / "inv.py", hosts, hub, model_revision="v9.9.9"), check=False)
    assert rc != 0
    assert "has no revision 'v9.9.9'" in out and "v1.0.0" in out
    assert "Beginning operation run" not in out  # nothing ran on a host
    rc, out, _ = deploy(write_inventory(tmp_path / "inv2.py", hosts, hub, model_id="mineru-fleet/nope"), check=False)
    assert rc != 0 and "mineru-fleet/nope not found" in out


def test_branch_revision_warns_unpinned(hosts, hub, tmp_path):
    from mineru_fleet.controller import modelstore
    from mineru_fleet.core.settings import Settings

    s = Settings(model_id=MODEL, model_revision="master", modelscope_domain=hub.domain("127.0.0.1"),
                 modelscope_ca_bundle=str(hub.ca), model_cache_dir=str(tmp_path / "c"))
    p = modelstore.prepare(s)
    assert p.manifest["is_branch"] is True
    assert [f.code for f in modelstore.revision_findings(s, p.manifest)] == ["unpinned-model-revision"]


def test_full_disk_fails_before_writing(hosts, hub, tmp_path):
    """3 MiB: enough for the planner's weights x 1.2, not for the model's files + the 1 MiB margin."""
    h = hosts[2]
    sandbox.ssh(h.ip, "mkdir -p /mnt/small && mount -t tmpfs -o size=3m tmpfs /mnt/small", config=instance())
    try:
        inv = write_inventory(tmp_path / "inv.py", [h], hub, state_dir="/mnt/small/state")
        rc, out, _ = deploy(inv, check=False)
        assert rc != 0
        assert "not enough free space for the model at /mnt/small/state/models/mineru-fleet/tiny-qwen2vl" in out
        assert h.ip in out and "needed" in out
        assert sandbox.ssh(h.ip, "find /mnt/small -mindepth 1 | wc -l", config=instance()).stdout.strip() == "0"
    finally:
        sandbox.ssh(h.ip, "umount /mnt/small", config=instance(), check=False)


def test_dropped_connection_resumes_without_refetching(hosts, hub, tmp_path):
    """The hub drops the big file's connection half-way: the client resumes with a Range request."""
    inv = write_inventory(tmp_path / "inv.py", hosts[:1], hub, model_revision=REV2,
                          model_cache_dir=str(tmp_path / "cache-drop"))
    hub.state.reset()
    half = 1 << 20
    hub.state.drop_after_bytes = half  # cuts model.safetensors (the only file > 1 MiB) half-way
    deploy(inv)
    stats = hub.state.stats()
    assert stats["drops"] == 1
    size = model_size(hub.root / MODEL / REV2)
    assert stats["file_bytes"] == size, stats  # every byte once: the resumed part was not fetched again
    assert host_files(hosts[0], REV2) == expected(hub.root / MODEL / REV2)


def test_killed_download_resumes_on_next_run(hosts, hub, tmp_path):
    """The controller's download is killed mid-file; the next run fetches only the rest."""
    cache = tmp_path / "cache-kill"
    inv = write_inventory(tmp_path / "inv.py", hosts[:1], hub, model_revision=REV2, model_cache_dir=str(cache))
    # the host must need the files: the controller fetches a revision only for hosts that lack it
    sandbox.ssh(hosts[0].ip, f"rm -rf {STATE}/models/{MODEL}/{REV2} {STATE}/models/{MODEL}/.{REV2}.partial", config=instance())
    hub.state.reset()
    hub.state.rate_bps = 400_000  # ~5 s for the 2 MB weights
    proc = subprocess.Popen([sys.executable, "-m", "pyinfra", str(inv), DEPLOY, "-y"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import time

        end = time.monotonic() + 60
        # the client writes 1 MiB chunks: kill once more than one chunk is on the controller's disk
        while hub.state.stats()["per_file"].get("model.safetensors", 0) < 1_800_000 and time.monotonic() < end:
            time.sleep(0.05)
        os.killpg(proc.pid, 9)
    finally:
        proc.wait()
    hub.state.rate_bps = None
    first = hub.state.stats()["per_file"].get("model.safetensors", 0)
    assert 0 < first < model_size(hub.root / MODEL / REV2)
    hub.state.reset()
    deploy(inv)
    again = hub.state.stats()["per_file"].get("model.safetensors", 0)
    weights = (hub.root / MODEL / REV2 / "model.safetensors").stat().st_size
    assert again <= weights - (1 << 20), (first, again)  # resumed after the written 1 MiB, not refetched
    assert host_files(hosts[0], REV2) == expected(hub.root / MODEL / REV2)


def test_upgrade_keeps_previous_revision_and_prunes_older(hosts, hub, tmp_path):
    h = hosts[0]
    for rev in (REV, REV2):
        deploy(write_inventory(tmp_path / f"inv-{rev}.py", [h], hub, model_revision=rev))
    revs = sandbox.ssh(h.ip, f"ls {STATE}/models/{MODEL}", config=instance()).stdout.split()
    assert set(revs) >= {REV, REV2}
    deploy(write_inventory(tmp_path / "inv-master.py", [h], hub, model_revision="master"))
    revs = sandbox.ssh(h.ip, f"ls {STATE}/models/{MODEL}", config=instance()).stdout.split()
    assert revs == sorted(["master", REV2]), revs  # keep the last 2


def test_host_mode_each_host_downloads(hosts, hub, tmp_path):
    inv = write_inventory(tmp_path / "inv.py", hosts[:2], hub, model_fetch_mode="host", model_revision=REV2,
                          model_fetch_python="/opt/mineru-fleet/modelscope-venv/bin/python", sandbox_modelscope_venv=True,
                          state_dir="/var/lib/mineru-fleet-hostmode")
    hub.state.reset()
    deploy(inv)
    size = model_size(hub.root / MODEL / REV2)
    assert hub.state.stats()["file_bytes"] == 2 * size
    for h in hosts[:2]:
        cp = sandbox.ssh(h.ip, f"cd /var/lib/mineru-fleet-hostmode/models/{MODEL}/{REV2} && ls -A", config=instance())
        assert "._____temp" not in cp.stdout and "config.json" in cp.stdout


def _tree(h, path: str) -> str:
    """Every file and folder under ``path`` on a host with its size, mode and mtime (changes show)."""
    return sandbox.ssh(h.ip, f"find {path} -printf '%p %s %m %T@\\n' 2>/dev/null | sort", config=instance(), check=False).stdout


def test_dry_run_changes_nothing_anywhere(hosts, hub, tmp_path):
    """``pyinfra --dry`` for a new model revision: 0 hub file bytes, no controller cache written, no host
    file changed, and the output says what would be sent."""
    h = hosts[0]
    deploy(write_inventory(tmp_path / "inv-now.py", [h], hub))  # the host serves REV
    cache = tmp_path / "cache-dry"
    inv = write_inventory(tmp_path / "inv.py", [h], hub, model_revision=REV2, model_cache_dir=str(cache))
    before = _tree(h, STATE) + _tree(h, "/opt/mineru-fleet") + _tree(h, "/etc/mineru-fleet")
    hub.state.reset()
    r = subprocess.run([sys.executable, "-m", "pyinfra", "--dry", str(inv), DEPLOY], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "MODELSCOPE_LOG_LEVEL": "40"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert hub.state.stats()["file_bytes"] == 0, hub.state.stats()
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), sorted(cache.rglob("*"))
    assert _tree(h, STATE) + _tree(h, "/opt/mineru-fleet") + _tree(h, "/etc/mineru-fleet") == before
    assert f"Send {len(expected(hub.root / MODEL / REV2))} model file(s)" in out and "into the controller cache" in out
    assert f"Verify and install {MODEL}@{REV2}" in out
