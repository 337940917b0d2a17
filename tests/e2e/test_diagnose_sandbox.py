"""`mineru-fleet diagnose --host` on the deployed sandbox hosts: the journal of each server since its
last start, read through pyinfra, shows no finding that our plan should have prevented, and the
figures vLLM logged agree with the plan.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mineru_fleet.core import diagnose as dg
from mineru_fleet.sandbox import quickstart

pytestmark = pytest.mark.e2e
UNIT = "mineru-vllm@0"


@pytest.fixture(scope="module")
def diagnosed(hosts):
    r = subprocess.run(
        [sys.executable, "-m", "mineru_fleet.cli", "diagnose", "--host", str(quickstart.INVENTORY), "--unit", UNIT, "--json"],
        capture_output=True, text=True, cwd=quickstart.REPO, timeout=600,
    )
    assert "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    return {d["source"].split()[0]: d for d in (out if isinstance(out, list) else [out])}


def test_every_host_diagnosed_from_its_last_start(hosts, ti, diagnosed):
    for h in hosts:
        d = diagnosed[h.ip]
        assert "error" not in d, d.get("error")
        assert d["starts"] == 1, "the journal is read from the unit's last start (its InvocationID)"
        assert d["invocation"] == ti[h.ip].check_output(f"systemctl show -p InvocationID --value {UNIT}")
        assert d["complete"] and d["ready"] and not d["failed"]


def test_no_finding_the_plan_should_have_prevented(hosts, diagnosed):
    for h in hosts:
        d = diagnosed[h.ip]
        prevented = [(f["code"], f["evidence"]) for f in d["findings"] if f["preventable"]]
        assert prevented == [], f"{h.ip}: the plan should have prevented {prevented}"
        assert not [f for f in d["findings"] if f["severity"] == "error"]
        assert not [f for f in d["findings"] if f["code"] == "plan-drift"], "the server runs what the deploy planned"
        assert any("compared with the plan" in n for n in d["notes"]), d["notes"]


def test_logged_figures_match_the_plan(hosts, plans, diagnosed):
    for h in hosts:
        d, sv = diagnosed[h.ip], plans[h.ip].servers[0]
        assert (d["platform"], d["engine"]) == ("cpu", "V1")
        assert d["dtype"] == sv.dtype
        if "--max-model-len" in sv.args:
            assert d["max_model_len"] == int(sv.args[sv.args.index("--max-model-len") + 1])
        assert d["kv_cache_tokens"] == sv.memory.kv_cache_tokens, "VLLM_CPU_KVCACHE_SPACE / bytes per token"
        assert d["max_concurrency"] == pytest.approx(sv.memory.max_concurrency, abs=0.01)
        assert d["model"] in sv.args


def test_the_same_journal_through_ssh_parses_the_same(hosts, ti, diagnosed):
    """Cross-check the pyinfra fact against journalctl run directly on the host."""
    h = hosts[0]
    inv = ti[h.ip].check_output(f"systemctl show -p InvocationID --value {UNIT}")
    raw = ti[h.ip].check_output(f"journalctl --no-pager -a -o short-iso _SYSTEMD_INVOCATION_ID={inv} + INVOCATION_ID={inv}")
    d = dg.parse_log(raw + "\n")
    assert d.kv_cache_tokens == diagnosed[h.ip]["kv_cache_tokens"]
    with_plan = [f["code"] for f in diagnosed[h.ip]["findings"] if f["code"] != "plan-drift"]  # plan-drift needs the plan
    assert sorted(f.code for f in d.findings) == sorted(with_plan)
