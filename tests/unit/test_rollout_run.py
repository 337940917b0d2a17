"""The controller side of rollouts, without hosts: the host view parser, vLLM's gauges, the state file, the lock,
the deployment record, and the CLI's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mineru_fleet.controller import rollouts
from mineru_fleet.core import rollout as R
from mineru_fleet.paths import REPO

VIEW = """## units
Id=mineru-vllm@0.service
ActiveState=active
MainPID=4242
ActiveEnterTimestampMonotonic=100000000

Id=mineru-vllm@1.service
ActiveState=failed
MainPID=0
ActiveEnterTimestampMonotonic=0
## now
160.50 300.00
## release
/opt/mineru-fleet/releases/cpu-390729ba86a3
## record
0123456789abcdef
## record.json
{"release": "cpu-390729ba86a3", "model_revision": "v2", "unit_sha256": "u", "servers": {"0": {"env_sha256": "e0", "port": 30000}}}
"""


def test_parse_view_reads_units_release_and_record():
    v = rollouts.parse_view(VIEW)
    assert v.active == {0: "active", 1: "failed"} and v.main_pid == {0: "4242", 1: "0"}
    assert v.uptime_s[0] == pytest.approx(60.5) and v.uptime_s[1] is None
    assert v.release == "cpu-390729ba86a3" and v.record_id == "0123456789abcdef"
    d = rollouts.deployment_of(v, 0)
    assert d == R.Deployment("cpu-390729ba86a3", "v2", "e0", "u", record="0123456789abcdef")
    # a host without a record (deployed before records existed) has no previous deployment to roll back to
    bare = rollouts.parse_view("## units\nId=mineru-vllm@0.service\nActiveState=inactive\nMainPID=0\n## record\n## record.json\n")
    assert bare.active == {0: "inactive"} and rollouts.deployment_of(bare, 0) is None
    assert rollouts.parse_view("garbage\x1b[2J").active == {}


def test_vllm_gauges_sum_label_sets_and_ignore_comments():
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_requests_running_total 99
"""
    assert rollouts.vllm_gauges(text) == {"running": 3.0, "waiting": 0.0, "kv_cache_usage": 0.25}
    assert rollouts.vllm_gauges("") == {}


def test_state_file_is_written_whole_and_private(tmp_path):
    st = R.new_rollout("r1", {"data": {"mineru_model_revision": "v2"}}, ["a:0", "b:0"], R.Options(canary=1), at=1.0)
    f = tmp_path / "deep" / "fleet.json"
    rollouts.write_state(f, st)
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert rollouts.read_state(f) == st
    assert [p.name for p in f.parent.iterdir()] == ["fleet.json"]  # no temp file left
    with pytest.raises(rollouts.RolloutRunError, match="nothing to resume"):
        rollouts.read_state(tmp_path / "none.json")
    f.write_text(f.read_text()[:100])
    with pytest.raises(R.StateError, match="fleet.json"):
        rollouts.read_state(f)


def test_default_state_file_is_per_inventory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    a, b = rollouts.default_state_file("inventory/production.py"), rollouts.default_state_file("other/production.py")
    assert a != b and a.parent == b.parent == tmp_path / "mineru-fleet" / "rollouts" and a.name.startswith("production-")


def test_a_second_rollout_of_the_fleet_is_refused(tmp_path):
    state = tmp_path / "fleet.json"
    with rollouts.FleetLock(state):
        code = ("import sys; sys.path.insert(0, %r)\n"
                "from pathlib import Path\nfrom mineru_fleet.controller import rollouts\n"
                "try:\n    rollouts.FleetLock(Path(%r)).__enter__()\nexcept rollouts.RolloutRunError as e:\n    print(e)\n") % (str(REPO), str(state))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        assert "another rollout of this fleet is running" in out and f"pid {os.getpid()}" in out
    with rollouts.FleetLock(state):  # released with the process' hold
        pass


def test_view_command_quotes_the_state_dir():
    cmd = rollouts.view_command("/var/lib/x y", [0, 1])
    assert "'/var/lib/x y/deployments/current'" in cmd and "mineru-vllm@1.service" in cmd


def test_deployment_record_is_stable_and_names_what_runs():
    from mineru_fleet.controller.factsdir import load_host_facts
    from mineru_fleet.core.planner import plan
    from mineru_fleet.core.settings import Settings
    from mineru_fleet.core.units import deployment_record
    from mineru_fleet.paths import EXAMPLE_HOSTS

    facts = load_host_facts(EXAMPLE_HOSTS / "seed-2x2080ti")
    s = Settings(model_revision="v1")
    p = plan(facts, s)
    rid, rec = deployment_record(p, s, "gpu-1", "cuda-abc")
    assert deployment_record(p, s, "gpu-1", "cuda-abc")[0] == rid and len(rid) == 16
    assert rec["release"] == "cuda-abc" and rec["model_revision"] == "v1" and set(rec["servers"]) == {sv.name for sv in p.servers}
    s2 = Settings(model_revision="v2")
    assert deployment_record(plan(facts, s2), s2, "gpu-1", "cuda-abc")[0] != rid
    assert json.dumps(rec)  # plain JSON


def test_restore_commands_quote_every_word():
    import shlex

    from mineru_fleet.core.settings import Settings
    from roles.rollback import restore_commands

    cmds = restore_commands(Settings(), "0123456789abcdef", {"release": "cpu-1", "servers": {"0": {}, "1": {}}})
    words = [w for c in cmds for w in shlex.split(c)]
    assert "/opt/mineru-fleet/releases/cpu-1" in words and "mineru-vllm@1.service" in words
    assert cmds[-1].endswith("/var/lib/mineru-fleet/deployments/current")


@pytest.mark.parametrize("argv, needle", [
    (["rollout", "inv.py", "--batch", "0"], "--batch"),
    (["rollout", "inv.py", "--max-fail", "150%"], "--max-fail"),
    (["rollout", "inv.py", "--data", "mineru_no_such=1"], "mineru_no_such"),
    (["rollout", "nowhere.py", "--dry-run"], "nowhere.py"),
    (["rollout", "nowhere.py", "--resume", "--state-file", "/nonexistent/x.json"], "nothing to resume"),
    (["drain", "gpu-1:x", "-i", "nowhere.py"], "gpu-1:x"),
    (["rollout", "inv.py", "--resume", "--data", "mineru_max_num_seqs=8"], "--data goes with a new rollout only"),
    (["status", "nowhere.py"], "nowhere.py"),
])
def test_cli_refuses_bad_input_with_a_message(argv, needle):
    r = subprocess.run([sys.executable, "-m", "mineru_fleet.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_resume_deploys_the_recorded_target_of_the_recorded_inventory(tmp_path, monkeypatch):
    """--resume takes the target (--data) from the state, and refuses a state of another inventory."""
    st = R.new_rollout("r1", {"inventory": "inventory/a.py", "data": {"mineru_max_num_seqs": 12, "mineru_extra_args": ["--x"]}},
                       ["h:0"], R.Options(canary=0), at=1.0)
    f = tmp_path / "s.json"
    rollouts.write_state(f, st)
    assert R.from_json(f.read_text()).target["data"] == {"mineru_max_num_seqs": 12, "mineru_extra_args": ["--x"]}
    seen = {}

    def fake_prepare(self):  # stop before any host: what would the resume deploy?
        seen["data"] = dict(self.o.data)
        raise rollouts.RolloutRunError("stop here")

    monkeypatch.setattr(rollouts.Runner, "prepare", fake_prepare)
    opts = rollouts.Options("inventory/a.py", {}, state_file=f)
    assert rollouts.main(opts, resume=True) == 2
    assert seen["data"] == {"mineru_max_num_seqs": 12, "mineru_extra_args": ["--x"]}
    assert rollouts.main(rollouts.Options("inventory/b.py", {}, state_file=f), resume=True) == 2
