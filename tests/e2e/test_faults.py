"""Faults a fleet sees, on the deployed sandbox hosts (issue 10): each test asserts recovery and that
nothing was lost, and records the recovery time in bench/results/faults.json (bench/README.md).

So far: ``kill -9`` of a server (systemd restarts it; the readiness gate makes "active" mean "serves"), and a crash
loop from a bad setting (systemd stops at the unit's start limit, ``diagnose --host`` names the cause, the next good
deploy recovers without a manual ``systemctl reset-failed``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mineru_fleet.onhost.ready import check_once
from mineru_fleet import sandbox
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
