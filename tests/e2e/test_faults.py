"""Faults a fleet sees, on the deployed sandbox hosts (issue 10): each test asserts recovery and that
nothing was lost, and records the recovery time in bench/results/faults.json (bench/README.md).

``kill -9`` of a server (systemd restarts it; the readiness gate makes "active" mean "serves"); a crash loop from a
bad setting (systemd stops at the unit's start limit, ``diagnose --host`` names the cause, the next good deploy
recovers without a manual ``systemctl reset-failed``); a rebooted host; the SSH connection cut and the controller
killed in the middle of a new release's install (a rerun converges; the half-installed release is never ``current``);
the disk filling during a model download (a clear error, the previous revision still serving).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mineru_fleet.controller.locks import lock_path
from mineru_fleet.controller.wheelhouse import release_id
from mineru_fleet.onhost.ready import check_once
from mineru_fleet import sandbox
from mineru_fleet.sandbox import modelhub
from mineru_fleet.sandbox import quickstart
from mineru_fleet.sandbox.network import close_control_masters

pytestmark = pytest.mark.e2e
UNIT = "mineru-vllm@0"
RESULTS = quickstart.REPO / "bench" / "results" / "faults.json"


def _record(name: str, row: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[name] = row
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _show(h, *props: str) -> dict[str, str]:
    out = h.check_output(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_kill_9_of_a_server_is_restarted_and_serves_again(ti, hosts, plans):
    for hst in hosts:
        h = ti[hst.ip]
        port = plans[hst.ip].servers[0].port
        base = f"http://{hst.ip}:{port}"
        assert check_once(base, chat=True)[0], "not serving before the fault"
        before = _show(h, "MainPID", "NRestarts")
        model_files = h.check_output(f"find {plans[hst.ip].model_dir} -type f -exec sha256sum {{}} + | sort")
        t0 = time.monotonic()
        h.run(f"kill -9 {before['MainPID']}")
        state, ready_at = {}, None
        while time.monotonic() - t0 < 600:
            state = _show(h, "MainPID", "NRestarts", "ActiveState", "SubState")
            if state["ActiveState"] == "active" and state["MainPID"] not in ("0", before["MainPID"]):
                ok, _ = check_once(base, chat=True, timeout=10)
                if ok:
                    ready_at = time.monotonic() - t0
                    break
            time.sleep(1)
        assert ready_at is not None, f"not serving again within 600 s: {state}"
        assert int(state["NRestarts"]) == int(before["NRestarts"]) + 1, state
        assert h.service(UNIT).is_enabled
        # nothing lost: the model folder is byte-for-byte the same, the env file untouched
        assert h.check_output(f"find {plans[hst.ip].model_dir} -type f -exec sha256sum {{}} + | sort") == model_files
        _record("kill-9", {"host": hst.name, "ready_after_s": round(ready_at, 1), "restart_sec": 10,
                           "note": "SIGKILL of the main PID -> Restart=on-failure after RestartSec=10 -> start -> "
                                   "ExecStartPost readiness gate (chat completion) -> active"})


BAD_FLAG = "--no-such-flag-crash-loop-test"


def test_crash_loop_stops_at_the_start_limit_and_the_next_good_deploy_recovers(ti, hosts, plans):
    hst = hosts[0]
    h = ti[hst.ip]
    base = f"http://{hst.ip}:{plans[hst.ip].servers[0].port}"
    bad_inventory = quickstart.REPO / "inventory" / "sandbox_crashloop.py"  # group "sandbox": its group_data applies
    data = {**sandbox.host_data(sandbox.default_config(), hst), "mineru_extra_args": [BAD_FLAG]}
    bad_inventory.write_text(f"sandbox = [({hst.ip!r}, {data!r})]\n")
    try:
        t0 = time.monotonic()
        assert quickstart.deploy(inventory=bad_inventory).returncode != 0, "a server that cannot start must fail the deploy"
        state, stopped_after = {}, None
        while time.monotonic() - t0 < 900:  # Restart=on-failure every 10 s until StartLimitBurst=3 within 1800 s
            state = _show(h, "ActiveState", "Result", "NRestarts")
            if state["ActiveState"] == "failed":  # between attempts the unit is "activating (auto-restart)"
                stopped_after = time.monotonic() - t0
                time.sleep(15)  # longer than RestartSec=10: systemd has given up when it is still failed
                again = _show(h, "ActiveState", "NRestarts")
                if again["ActiveState"] == "failed" and again["NRestarts"] == state["NRestarts"]:
                    break
                stopped_after = None
            time.sleep(2)
        assert stopped_after is not None, f"systemd did not stop retrying: {state}"
        journal = h.check_output(f"journalctl -u {UNIT} --no-pager -n 50")
        assert "Start request repeated too quickly" in journal, journal[-2000:]
        d = subprocess.run([sys.executable, "-m", "mineru_fleet.cli", "diagnose", "--host", str(bad_inventory), "--unit", UNIT],
                           cwd=quickstart.REPO, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in d.stderr, d.stderr[-2000:]
        assert BAD_FLAG in d.stdout, d.stdout[-3000:]  # the cause, named from the journal of the failed start
    finally:
        bad_inventory.unlink(missing_ok=True)
    t1 = time.monotonic()
    assert quickstart.deploy("--limit", hst.ip).returncode == 0, "the next good deploy must recover by itself"
    recovered_after = time.monotonic() - t1
    assert h.service(UNIT).is_running and h.service(UNIT).is_enabled
    assert check_once(base, chat=True, timeout=10)[0]
    assert BAD_FLAG not in h.check_output(f"cat /etc/mineru-fleet/{UNIT}.env")
    _record("crash-loop", {"host": hst.name, "start_limit_hit_after_s": round(stopped_after, 1),
                           "good_deploy_recovered_in_s": round(recovered_after, 1),
                           "note": "bad extra arg -> vLLM exits at start -> Restart=on-failure (RestartSec=10) until "
                                   "StartLimitBurst=3 -> failed (start-limit-hit); the next deploy clears the failed state "
                                   "(reset-failed) and starts it"})


def test_rebooted_host_comes_back_serving_with_its_release_and_model(hosts, plans):
    """``systemctl reboot`` inside a sandbox host (nspawn exits 133, its supervisor boots it again): the server
    is back enabled, active and ready, on the same release and the same model bytes, with no deploy."""
    hst = hosts[-1]
    cfg = sandbox.default_config()
    base = f"http://{hst.ip}:{plans[hst.ip].servers[0].port}"
    model_dir = plans[hst.ip].model_dir

    def sh(cmd: str) -> str:
        return sandbox.ssh(hst.ip, cmd, config=cfg, check=False, timeout=20).stdout

    def drop_shared_connections() -> None:
        try:
            close_control_masters(cfg)
        except subprocess.TimeoutExpired:
            pass

    boot_id = sh("cat /proc/sys/kernel/random/boot_id").strip()
    release = sh("readlink /opt/mineru-fleet/current").strip()
    model_files = sh(f"find {model_dir} -type f -exec sha256sum {{}} + | sort")
    assert release and model_files and check_once(base, chat=True)[0]
    t0 = time.monotonic()
    sandbox.ssh(hst.ip, "systemctl reboot", config=cfg, check=False)
    drop_shared_connections()  # the shared SSH connection dies with the container
    ready_at = None
    while time.monotonic() - t0 < 600:
        time.sleep(2)
        try:
            now_boot = sh("cat /proc/sys/kernel/random/boot_id").strip()
        except subprocess.TimeoutExpired:  # the host is down for a moment
            drop_shared_connections()
            continue
        # "active" only once the unit's own readiness gate (ExecStartPost) passed: the API may answer a little before
        if (now_boot and now_boot != boot_id and sh(f"systemctl is-active {UNIT}").strip() == "active"
                and check_once(base, chat=True, timeout=10)[0]):
            ready_at = time.monotonic() - t0
            break
    assert ready_at is not None, "not serving again within 600 s of the reboot"
    assert sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
    assert sh(f"systemctl is-active {UNIT}").strip() == "active"
    assert sh("readlink /opt/mineru-fleet/current").strip() == release
    assert sh(f"find {model_dir} -type f -exec sha256sum {{}} + | sort") == model_files
    _record("reboot", {"host": hst.name, "ready_after_s": round(ready_at, 1),
                       "note": "systemctl reboot in the container -> nspawn exit 133 -> supervisor boots it -> "
                               "mineru-vllm@0 (enabled) starts -> readiness gate -> serving"})


# ---------------------------------------------------------------------------------------------------------------
# Cut connections and a killed controller in the middle of a deploy


def _fault_inventory(hst, **data) -> Path:
    """A one-host inventory in group "sandbox" (so its group_data applies) with ``data`` on top."""
    inv = quickstart.REPO / "inventory" / f"sandbox_fault_{hst.name}.py"
    inv.write_text(f"sandbox = [({hst.ip!r}, {({**sandbox.host_data(sandbox.default_config(), hst), **data})!r})]\n")
    return inv


def _deploy_in_background(inv: Path, log: Path, deploy_file: str = "deploy.py") -> subprocess.Popen:
    """``pyinfra INV deploy.py -y`` in its own process group (so the test can kill the whole controller)."""
    return subprocess.Popen([sys.executable, "-m", "pyinfra", str(inv), deploy_file, "-y"], cwd=quickstart.REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _other_lock(tmp_path: Path) -> Path:
    """locks/cpu.txt with one more accepted hash on its first pin: the same wheels, another release id (a real,
    full install from the wheelhouse, as an upgrade would be)."""
    text = lock_path("cpu").read_text()
    at = text.index("--hash=sha256:")
    other = tmp_path / "cpu-other.txt"
    other.write_text(text[:at] + "--hash=sha256:" + "0" * 64 + " \\\n    " + text[at:])
    assert release_id("cpu", other) != release_id("cpu")
    return other


def test_cut_connection_and_killed_controller_mid_install_never_make_a_half_release_current(hosts, plans, tmp_path):
    """A new release (another lock) is being installed: (1) every SSH session to the host is killed mid-install,
    (2) a rerun's controller is SIGKILLed mid-install; each time the host keeps serving the old release (same
    MainPID, ``current`` unchanged, env file unchanged). (3) A plain rerun converges: the new release complete,
    ``current``, serving. Then the default inventory takes the host back to the old release."""
    hst = hosts[0]
    cfg = sandbox.default_config()
    base = f"http://{hst.ip}:{plans[hst.ip].servers[0].port}"
    lock = _other_lock(tmp_path)
    new = release_id("cpu", lock)
    rel = f"/opt/mineru-fleet/releases/{new}"

    def sh(cmd: str, timeout: float = 30) -> str:
        return sandbox.ssh(hst.ip, cmd, config=cfg, check=False, timeout=timeout).stdout.strip()

    def serving_state() -> tuple[str, str, str]:
        return (sh("readlink /opt/mineru-fleet/current"), sh(f"systemctl show -p MainPID --value {UNIT}"),
                sh(f"sha256sum /etc/mineru-fleet/{UNIT}.env"))

    def installing_for(seconds: float):
        """True once uv has been syncing the new release's venv for ``seconds`` (really mid-install)."""
        out = sh(f"pid=$(pgrep -o -f 'pip sync .*{new}/venv') && ps -o etimes= -p $pid").strip()
        return out.isdigit() and int(out) >= seconds

    before = serving_state()
    assert before[0].endswith("/" + release_id("cpu")) and before[1] not in ("", "0") and check_once(base, chat=True)[0]
    inv = _fault_inventory(hst, mineru_runtime_lock=str(lock))
    timings = {}
    try:
        # (1) the SSH connection cut: every sshd session process on the host killed
        proc = _deploy_in_background(inv, tmp_path / "cut.log")
        _wait_for(lambda: installing_for(5), 300, "the new release's install to run")
        sh("pkill -9 -f '^sshd-session: ' ; pkill -9 -f '^sshd: root@' ; true")
        close_control_masters(cfg)
        rc = proc.wait(timeout=300)
        out = (tmp_path / "cut.log").read_text()
        assert rc != 0, "a deploy whose connection was cut must fail\n" + out[-3000:]
        assert serving_state() == before, "the cut deploy changed what serves"
        assert check_once(base, chat=True, timeout=20)[0]
        # the worst case: the install died with the connection (no completion marker, a half venv)
        sh("pkill -9 -f 'uv pip sync'; pkill -9 -f 'uv venv'; pkill -9 -f {rel}/.install.lock; true".format(rel=rel))
        assert sh(f"test -f {rel}/venv/.mineru-fleet-complete && echo complete || echo partial") == "partial"

        # (2) the controller killed (SIGKILL of pyinfra's whole process group) mid-install
        proc = _deploy_in_background(inv, tmp_path / "kill.log")
        _wait_for(lambda: installing_for(5), 300, "the rerun's install to run")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert serving_state() == before, "the killed deploy changed what serves"
        assert check_once(base, chat=True, timeout=20)[0]

        # (3) a plain rerun converges (it waits for an install the killed run left going, then finishes)
        t0 = time.monotonic()
        r = quickstart.deploy(inventory=inv)
        timings["rerun_converged_s"] = round(time.monotonic() - t0, 1)
        assert r.returncode == 0, "the rerun after the faults must converge"
        now = serving_state()
        assert now[0] == rel and now[1] != before[1], now
        assert sh(f"test -f {rel}/venv/.mineru-fleet-complete && echo complete") == "complete"
        assert check_once(base, chat=True, timeout=20)[0]
    finally:
        inv.unlink(missing_ok=True)
        # back to the project's lock (the old release folder is still there: nothing to install)
        t0 = time.monotonic()
        back = quickstart.deploy("--limit", hst.ip)
        timings["back_to_previous_release_s"] = round(time.monotonic() - t0, 1)
        sh(f"rm -rf {rel}", timeout=300)  # 7 GB: do not keep it on the test host
    assert back.returncode == 0
    assert sh("readlink /opt/mineru-fleet/current") == before[0] and check_once(base, chat=True, timeout=20)[0]
    _record("cut-connection-and-killed-controller", {
        "host": hst.name, **timings,
        "note": "new release (another lock) mid-install: SSH sessions killed, then the rerun's controller SIGKILLed; "
                "both times the old release kept serving (same MainPID, current, env); a plain rerun installed and "
                "switched; the default inventory switched back without installing"})


def test_disk_filling_during_a_model_download_keeps_the_previous_revision_serving(hosts, plans, tmp_path):
    """The host's model folder has room when the preflight checks it; while the deploy runs, something else fills
    the disk: the transfer fails with a clear error and the server keeps serving the previous revision."""
    hst = hosts[-1]
    cfg = sandbox.default_config()
    p = plans[hst.ip]
    parent = p.model_dir.rsplit("/", 1)[0]
    base = f"http://{hst.ip}:{p.servers[0].port}"
    hub_domain, ca = f"127.0.0.1:{quickstart.hub_port()}", quickstart.HUB_HOME / "certs" / "ca.pem"
    rev = "v1.0.1-diskfull"
    src = tmp_path / "model"
    src.mkdir()
    for f in quickstart.MODEL_DIR.iterdir():
        if f.is_file():
            (src / f.name).write_bytes(f.read_bytes())
    (src / "pad.bin").write_bytes(os.urandom(96 << 20))
    rev_dir = modelhub.publish(quickstart.HUB_HOME / "root", quickstart.HUB_MODEL_ID, rev, src)

    def sh(cmd: str, timeout: float = 60) -> str:
        return sandbox.ssh(hst.ip, cmd, config=cfg, check=False, timeout=timeout).stdout.strip()

    before = (sh(f"systemctl show -p MainPID --value {UNIT}"), sh(f"cat /etc/mineru-fleet/{UNIT}.env"),
              sh(f"find {p.model_dir} -type f -exec sha256sum {{}} + | sort"))
    assert before[0] not in ("", "0") and p.model_dir in before[1] and check_once(base, chat=True)[0]
    # a 128 MiB file system where the models live (the current revision copied in): room for the new one, barely
    sh(f"cp -a {parent} /root/models-before && mount -t tmpfs -o size=128m,mode=755 tmpfs {parent} && "
       f"cp -a /root/models-before/. {parent}/")
    inv = _fault_inventory(hst, mineru_model_revision=rev, mineru_model_free_space_margin_mib=1,
                           mineru_model_cache_dir=str(tmp_path / "cache"))
    try:
        modelhub.client(hub_domain, ca, "/_hub/control", {"reset": True, "rate_bps": 24_000_000})  # ~4 s for 96 MiB
        proc = _deploy_in_background(inv, tmp_path / "full.log")
        # the download starts once the preflight (which found room) is over: then the disk fills up
        _wait_for(lambda: modelhub.client(hub_domain, ca, "/_hub/stats")["file_bytes"] > 0, 300, "the model download",
                  every=0.1)
        sh(f"fallocate -l 64M {parent}/.someone-elses-file")
        rc = proc.wait(timeout=600)
        out = (tmp_path / "full.log").read_text()
        assert rc != 0, "the deploy must fail when the disk is full\n" + out[-3000:]
        assert "No space left on device" in out and f".{rev}.partial" in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        # the previous revision still serves, untouched; the new one is not installed
        assert sh(f"systemctl show -p MainPID --value {UNIT}") == before[0]
        assert sh(f"cat /etc/mineru-fleet/{UNIT}.env") == before[1]
        assert sh(f"find {p.model_dir} -type f -exec sha256sum {{}} + | sort") == before[2]
        assert sh(f"test -e {parent}/{rev} && echo installed || echo absent") == "absent"
        assert check_once(base, chat=True, timeout=20)[0]
    finally:
        modelhub.client(hub_domain, ca, "/_hub/control", {"reset": True, "rate_bps": None})
        inv.unlink(missing_ok=True)
        sh(f"umount {parent}; rm -rf /root/models-before")
        import shutil
        shutil.rmtree(rev_dir, ignore_errors=True)
    assert sh(f"find {p.model_dir} -type f -exec sha256sum {{}} + | sort") == before[2]
    _record("disk-full-during-download", {
        "host": hst.name, "error": "rsync: No space left on device (28)",
        "note": "the preflight found room; 64 MiB of the model file system filled during the 96 MiB download: the "
                "deploy failed naming the partial folder, the server kept its MainPID, env file and revision bytes"})
