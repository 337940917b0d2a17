"""`mineru-fleet plan` as a user runs it: exit codes, JSON shape, errors without tracebacks."""

import json
import subprocess
import sys

import pytest

from mineru_fleet.paths import EXAMPLE_HOSTS
from tests.conftest import REPO

SEED = str(EXAMPLE_HOSTS / "seed-2x2080ti")
H100 = str(EXAMPLE_HOSTS / "h100-1x")


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mineru_fleet.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_plan_json_shape_for_reference_settings():
    r = run("plan", "--facts", SEED, "--data", "tensor_parallel_size=2", "--data", "gpu_memory_utilization=0.3",
            "--data", "max_model_len=16384", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert set(p) >= {"host", "profile", "servers", "warnings"}
    (s,) = p["servers"]
    assert set(s) >= {"name", "port", "cuda_visible_devices", "tensor_parallel_size", "dtype", "env", "args", "memory"}
    assert set(s["memory"]) >= {"budget_gib", "weights_gib", "kv_cache_gib", "max_concurrency"}
    assert all(set(w) == {"code", "message", "fix"} for w in p["warnings"])
    assert s["env"]["GLOO_SOCKET_IFNAME"] == "enp5s0"


def test_plan_text_is_a_table_with_reasons():
    r = run("plan", "--facts", SEED)
    assert r.returncode == 0
    assert "mineru-vllm@0" in r.stdout and "mineru-vllm@1" in r.stdout and "30001" in r.stdout
    assert "FlashAttention-2 needs sm_80" in r.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "tensor_paralel_size=2"], "did you mean mineru_tensor_parallel_size"),
        (["--data", "gpus=0,7"], "gpu-index"),
        (["--data", "tensor_parallel_size=3"], "does not divide"),
        (["--data", "gpu_memory_utilization=1.5"], "gpu_memory_utilization"),
        (["--data", "port=65535"], "65535"),
        (["--data", "oops"], "KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_without_traceback(args, needle):
    r = run("plan", "--facts", SEED, *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_missing_facts_folder():
    r = run("plan", "--facts", "/nonexistent/host")
    assert r.returncode == 2 and "no such facts folder" in r.stderr and "Traceback" not in r.stderr


def test_folder_without_query_gpu_is_a_cpu_host(tmp_path):
    for name in ("os.txt", "extra.txt"):
        (tmp_path / name).write_text((EXAMPLE_HOSTS / "h100-1x" / name).read_text())
    r = run("plan", "--facts", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["profile"] == "cpu"
    r = run("plan", "--facts", str(tmp_path), "--data", "profile=cuda")
    assert r.returncode == 2 and "nvidia-smi" in r.stderr


def test_live_gather_at_local_saves_a_facts_folder(tmp_path):
    """pyinfra's @local connector: the same fact the deploy uses, written in the fixtures' format."""
    r = run("plan", "--host", "@local", "--save", str(tmp_path / "facts"), "--data", "profile=cpu")
    assert (tmp_path / "facts" / "os.txt").is_file() and (tmp_path / "facts" / "extra.txt").is_file()
    again = run("plan", "--facts", str(tmp_path / "facts"), "--data", "profile=cpu", "--json")
    assert r.returncode == again.returncode  # same verdict from the saved copy
    assert "Traceback" not in r.stderr


def test_deploy_stops_before_changes_on_bad_data():
    r = subprocess.run([sys.executable, "-m", "pyinfra", "@local", "deploy.py", "-y", "--data", "mineru_tensor_paralel_size=2"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0
    assert "unknown variable 'mineru_tensor_paralel_size' (did you mean mineru_tensor_parallel_size?)" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_host_that_names_nothing_is_bad_input(tmp_path):
    r = run("plan", "--host", "/missing/inventory.py")
    assert r.returncode == 2 and "no inventory file '/missing/inventory.py'" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty.py"
    empty.write_text("hosts = []\n")
    r = run("plan", "--host", str(empty))
    assert r.returncode == 2 and "names no host" in r.stderr and "Traceback" not in r.stderr
