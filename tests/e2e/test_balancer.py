"""HAProxy in front of the sandbox fleet, under load: 2 serving hosts + 1 balancer host (inventory group `balancers`).

Real HAProxy 3.0 from Debian 13, real vLLM 0.10.2 CPU servers, real chat completions with a page
image from ``mineru_fleet.sandbox.loadgen``; the runtime API through pyinfra
(``mineru_fleet.controller.balancer``). Every test leaves the fleet as it found it: the full
inventory deployed, every server ready in the balancer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests

from mineru_fleet import sandbox
from mineru_fleet.controller import balancer
from mineru_fleet.core import haproxy
from mineru_fleet.core.rollout import Balancer, Server
from mineru_fleet.sandbox import loadgen, quickstart

pytestmark = pytest.mark.e2e
UNIT = "mineru-vllm@0"
INVENTORY = quickstart.INVENTORY
PORT = 8000  # mineru_balancer_port's default
FIGURES: dict = {}
RESULTS = quickstart.REPO / "bench" / "results" / "balancer.json"
N_HOSTS = int(os.environ.get("MINERU_FLEET_E2E_HOSTS", "2"))  # as tests/e2e/conftest.py


@dataclass
class Fleet:
    balancer: sandbox.SandboxHost
    servers: list[sandbox.SandboxHost]

    @property
    def url(self) -> str:
        return f"http://{self.balancer.ip}:{PORT}"


def sh(host: sandbox.SandboxHost, command: str, timeout: float = 120) -> str:
    return sandbox.ssh(host, command, timeout=timeout).stdout.strip()


def run_deploy(inventory, *extra: str) -> str:
    r = subprocess.run([sys.executable, "-m", "pyinfra", str(inventory), "deploy.py", "-y", *extra], cwd=quickstart.REPO,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return r.stdout + r.stderr


def changes(output: str) -> dict[str, tuple[int, int]]:
    """``{host: (operations that changed something, operations)}`` from pyinfra's run log (``[host] Success``
    is a change, ``No changes`` none, ``Skipped`` not counted), and ``"total"`` from its results table."""
    out: dict[str, tuple[int, int]] = {}
    for m in re.finditer(r"^\s+\[([^\]]+)\]\s+(Success|No changes|Error)\s*$", output, re.M):
        c, t = out.get(m.group(1), (0, 0))
        out[m.group(1)] = (c + (m.group(2) != "No changes"), t + 1)
    grand = re.search(r"Grand total\s+(\d+)\s+(\S+)", output)
    assert grand, output[-3000:]
    out["total"] = ((0 if grand.group(2) == "-" else int(grand.group(2))), int(grand.group(1)))
    return out


def until(what: str, cond: Callable[[], object], timeout: float, interval: float = 0.5):
    """Poll ``cond`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mineru_fleet.cli", *args], cwd=quickstart.REPO, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, f"mineru-fleet {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def haproxy_pids(bal: sandbox.SandboxHost) -> tuple[int, list[int]]:
    """(the unit's MainPID = the master, its worker processes)."""
    master = int(sh(bal, "systemctl show -p MainPID --value haproxy.service"))
    workers = [int(p) for p in sh(bal, f"pgrep -P {master} -x haproxy || true").split()]
    return master, workers


def main_pid(h: sandbox.SandboxHost) -> int:
    return int(sh(h, f"systemctl show -p MainPID --value {UNIT}"))


def server_of(h: sandbox.SandboxHost) -> Server:
    return Server(h.ip, 0)


@pytest.fixture(scope="module")
def fleet(hosts) -> Fleet:
    """The session's serving hosts plus its balancer host (tests/e2e/conftest.py), all deployed (a rerun here
    changes nothing when the session deployed them)."""
    everyone = quickstart.prepare(N_HOSTS, balancer=True)
    bal = next(h for h in everyone if h.balancer)
    serving = [h for h in everyone if not h.balancer]
    assert [h.ip for h in serving] == [h.ip for h in hosts]
    t = time.monotonic()
    run_deploy(INVENTORY)
    FIGURES["deploy_with_balancer_s"] = round(time.monotonic() - t, 1)
    try:
        yield Fleet(bal, serving)
    finally:
        if FIGURES:
            print(f"\nbalancer e2e figures: {json.dumps(FIGURES, indent=1)}")
            data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
            RESULTS.parent.mkdir(exist_ok=True)
            RESULTS.write_text(json.dumps({**data, **FIGURES}, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def lb(fleet):
    """The runtime API of the balancer, connected through pyinfra; both servers UP before a test starts."""
    with balancer.Runtime(str(INVENTORY)) as rt:
        for h in fleet.servers:
            rt.wait_until(server_of(h), lambda r: r.balancer is Balancer.UP, timeout=120)
        yield rt


def test_balancer_serves_chat_completions_through_both_servers(fleet, lb):
    rows = haproxy.servers_of(lb.show_stat())
    names = [haproxy.server_name(server_of(h)) for h in fleet.servers]
    assert sorted(rows) == sorted(names)
    assert all(rows[n].status == "UP" and rows[n].check_status == "L7OK" for n in names), rows
    # through the balancer: the model every server lists
    direct = {loadgen.served_model(f"http://{h.ip}:30000") for h in fleet.servers}
    assert len(direct) == 1 and loadgen.served_model(fleet.url) in direct
    before = {n: rows[n].stot for n in names}
    r = loadgen.LoadGen(fleet.url, requests=12, time_limit=300, concurrency=2).start().wait(timeout=400)
    FIGURES["a_load"] = r.as_dict()
    assert (r.sent, r.ok, r.failed) == (12, 12, 0), r.text()
    after = haproxy.servers_of(lb.show_stat())
    assert all(after[n].stot > before[n] for n in names), {n: (before[n], after[n].stot) for n in names}
    # the runtime API is root's only
    assert sh(fleet.balancer, f"stat -c '%a %U' {haproxy.ADMIN_SOCKET}") == "600 root"


def test_second_deploy_changes_nothing_on_any_host(fleet):
    pids = {h.ip: main_pid(h) for h in fleet.servers}
    ha = haproxy_pids(fleet.balancer)
    got = changes(run_deploy(INVENTORY))
    assert got["total"][1] > 0 and got["total"][0] == 0, got
    assert got[fleet.balancer.ip][1] > 0 and got[fleet.balancer.ip][0] == 0, got
    assert {h.ip: main_pid(h) for h in fleet.servers} == pids
    assert haproxy_pids(fleet.balancer) == ha  # no reload: same master, same worker


def test_removing_and_adding_back_a_host_reloads_haproxy_with_no_failed_request(fleet, lb):
    gone = fleet.servers[-1]
    gone_name = haproxy.server_name(server_of(gone))
    smaller = INVENTORY.with_name("sandbox_e2e_balancer_minus_one.py")
    smaller.write_text(INVENTORY.read_text() + f"\nsandbox = [(n, d) for n, d in sandbox if n != {gone.ip!r}]\n")
    master, workers = haproxy_pids(fleet.balancer)
    gen = loadgen.LoadGen(fleet.url, requests=10**6, time_limit=1200, concurrency=2).start()
    try:
        until("load flowing", lambda: gen.snapshot().ok >= 4, 300)
        t = time.monotonic()
        got = changes(run_deploy(smaller, "--limit", fleet.balancer.ip))
        FIGURES["c_deploy_without_host_s"] = round(time.monotonic() - t, 1)
        assert got[fleet.balancer.ip][0] >= 2, got  # the config and the reload
        assert fleet.servers[0].ip not in got and gone.ip not in got  # --limit: the serving hosts are not deployed
        until("the removed server out of the live config",
              lambda: gone_name not in haproxy.servers_of(lb.show_stat()), 60)
        assert "server " + gone_name not in sh(fleet.balancer, "cat /etc/haproxy/haproxy.cfg")
        ok = gen.snapshot().ok
        until("requests served by the one server left", lambda: gen.snapshot().ok >= ok + 4, 300)

        t = time.monotonic()
        got = changes(run_deploy(INVENTORY, "--limit", fleet.balancer.ip))
        FIGURES["c_deploy_with_host_s"] = round(time.monotonic() - t, 1)
        assert got[fleet.balancer.ip][0] >= 2, got
        lb.wait_until(server_of(gone), lambda r: r.balancer is Balancer.UP, timeout=120)
        stot = lb.server_rows(server_of(gone))[fleet.balancer.ip].stot
        until("the server added back takes requests",
              lambda: lb.server_rows(server_of(gone))[fleet.balancer.ip].stot > stot, 300)
    finally:
        result = gen.stop(timeout=900)
        smaller.unlink(missing_ok=True)
    FIGURES["c_load"] = result.as_dict()
    assert result.sent > 0 and result.ok > 8 and result.failed == 0, result.text()
    new_master, new_workers = haproxy_pids(fleet.balancer)
    assert new_master == master  # reloads, never a restart: the master process stays
    assert new_workers and not set(new_workers) & set(workers)


def test_a_reload_keeps_a_drained_server_drained(fleet, lb):
    """The deploy saves the servers' runtime state before a reload; the new worker loads it, so a config
    change in the middle of a drain does not put the server back in the rotation."""
    s = server_of(fleet.servers[-1])
    master, workers = haproxy_pids(fleet.balancer)
    lb.set_state(s, "drain")
    try:
        got = changes(run_deploy(INVENTORY, "--limit", fleet.balancer.ip, "--data", "mineru_balancer_check_inter_ms=1500"))
        assert got[fleet.balancer.ip][0] >= 2, got
        assert "inter 1500ms" in sh(fleet.balancer, "cat /etc/haproxy/haproxy.cfg")

        def answered_by_a_new_worker() -> bool:
            pid = re.search(r"^Pid: (\d+)", lb.command("show info")[fleet.balancer.ip], re.M)
            return bool(pid) and int(pid.group(1)) not in workers and int(pid.group(1)) in haproxy_pids(fleet.balancer)[1]

        until("the runtime API answered by the new worker", answered_by_a_new_worker, 60)
        assert haproxy_pids(fleet.balancer)[0] == master
        row = lb.server_rows(s)[fleet.balancer.ip]
        assert row.balancer is Balancer.DRAIN, row
    finally:
        run_deploy(INVENTORY, "--limit", fleet.balancer.ip)  # the inventory's own config again
        lb.set_state(s, "ready")
        lb.wait_until(s, lambda r: r.balancer is Balancer.UP, timeout=120)


def test_drain_restart_ready_under_load_fails_no_request(fleet, lb):
    target = fleet.servers[0]
    s = server_of(target)
    pid = main_pid(target)
    gen = loadgen.LoadGen(fleet.url, requests=10**6, time_limit=1500, concurrency=2).start()
    try:
        until("load flowing", lambda: gen.snapshot().ok >= 4, 300)
        t = time.monotonic()
        # the operator's commands: `mineru-fleet drain` returns once the balancer and vLLM say it is idle
        cli("drain", f"{target.ip}:0", "-i", str(INVENTORY), "--wait", "600")
        rows = lb.wait_until(s, lambda r: r.idle and r.balancer is Balancer.DRAIN, timeout=5)
        FIGURES["d_drained_s"] = round(time.monotonic() - t, 1)
        drained_stot = rows[fleet.balancer.ip].stot

        t = time.monotonic()
        # as the service role does: the unit's start limit (3 in 30 min) counts crashes, not deliberate restarts
        # (this module's repeated runs restart the same server); restart returns once the readiness gate passed
        sh(target, f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}", timeout=1200)
        FIGURES["d_restart_s"] = round(time.monotonic() - t, 1)
        assert main_pid(target) != pid
        assert requests.get(f"http://{target.ip}:30000/health", timeout=30).status_code == 200
        # out of the balancer all along (DRAIN, or DOWN while its checks rise again): no request was sent to it
        row = lb.server_rows(s)[fleet.balancer.ip]
        assert row.balancer is not Balancer.UP and row.stot == drained_stot, row

        t = time.monotonic()
        cli("enable", f"{target.ip}:0", "-i", str(INVENTORY), "--wait", "120")  # returns once HAProxy sees it UP
        rows = lb.wait_until(s, lambda r: r.balancer is Balancer.UP, timeout=5)
        FIGURES["d_up_again_s"] = round(time.monotonic() - t, 1)
        stot = rows[fleet.balancer.ip].stot
        until("the restarted server takes requests again", lambda: lb.server_rows(s)[fleet.balancer.ip].stot > stot, 300)
    finally:
        result = gen.stop(timeout=900)
        lb.set_state(s, "ready")
    FIGURES["d_load"] = result.as_dict()
    assert result.sent > 0 and result.ok > 8 and result.failed == 0, result.text()
