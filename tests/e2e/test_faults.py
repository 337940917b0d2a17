"""Faults a fleet sees, on the deployed sandbox hosts (issue 10): each test asserts recovery and that
nothing was lost, and records the recovery time in bench/results/faults.json (bench/README.md).

So far: ``kill -9`` of a server (systemd restarts it; the readiness gate makes "active" mean "serves").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mineru_fleet.onhost.ready import check_once
from mineru_fleet.sandbox import quickstart

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
