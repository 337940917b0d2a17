"""Each planner decision and each bad-input case, on the reference fixtures."""

import dataclasses
import json

import pytest

from mineru_fleet.controller.factsdir import load_host_facts, read_facts_dir
from mineru_fleet.core.hostfacts import Disk, build_host_facts
from mineru_fleet.core.modelinfo import MINERU25_PROFILE, ModelFacts
from mineru_fleet.core.planner import PlanError, plan
from mineru_fleet.core.settings import load_settings, to_inventory
from mineru_fleet.paths import EXAMPLE_HOSTS
from tests.conftest import FIXTURES

REFERENCE = {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.3, "max_model_len": 16384}


def seed():
    return load_host_facts(EXAMPLE_HOSTS / "seed-2x2080ti")


def h100():
    return load_host_facts(EXAMPLE_HOSTS / "h100-1x")


def cpu_host(**os_overrides):
    files = read_facts_dir(EXAMPLE_HOSTS / "h100-1x")
    f = build_host_facts("cpu-1", {k: v for k, v in files.items() if k in ("os.txt", "extra.txt")})
    return dataclasses.replace(f, **os_overrides) if os_overrides else f


def P(facts, **data):
    return plan(facts, load_settings(to_inventory(data), facts.host))


def codes(p):
    return {w.code for w in p.warnings}


def errors(facts, **data):
    with pytest.raises(PlanError) as e:
        P(facts, **data)
    assert facts.host in str(e.value)
    return {f.code: f for f in e.value.errors}


def test_reference_settings_on_seed_host():
    p = P(seed(), **REFERENCE)
    assert p.profile == "cuda" and len(p.servers) == 1
    s = p.servers[0]
    assert s.dtype == "float16"
    assert s.env["VLLM_USE_V1"] == "0"
    assert s.env["VLLM_ATTENTION_BACKEND"] == "XFORMERS"
    assert s.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert s.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert s.env["GLOO_SOCKET_IFNAME"] == "enp5s0" and s.env["NCCL_SOCKET_IFNAME"] == "enp5s0"
    assert s.env["VLLM_HOST_IP"] == "192.168.1.23"
    assert s.env["MINERU_MODEL_SOURCE"] == "local"
    assert "--disable-custom-all-reduce" in s.args
    assert s.args[s.args.index("--tensor-parallel-size") + 1] == "2"
    assert s.args[s.args.index("--max-model-len") + 1] == "16384"
    assert s.args[s.args.index("--gpu-memory-utilization") + 1] == "0.3"
    assert s.memory.budget_gib == pytest.approx(6.44, rel=0.03)
    assert s.memory.weights_gib == pytest.approx(1.09, abs=0.01)
    assert s.memory.kv_cache_gib == pytest.approx(3.38, abs=0.05)  # the log's KV cache
    assert {"mm-worst-case-exceeds-max-model-len", "logits-processor-off", "hostname-unresolvable"} <= codes(p)
    mm = next(w for w in p.warnings if w.code == "mm-worst-case-exceeds-max-model-len")
    assert "18225" in mm.message and "16384" in mm.message and "max_model_len: 18432" in mm.fix


def test_every_row_has_a_reason():
    p = P(seed(), **REFERENCE)
    assert all(r.why for sv in p.servers for r in sv.rows) and all(r.why for r in p.rows)


def test_seed_without_tp_is_one_server_per_gpu():
    p = P(seed())
    assert [(s.port, s.cuda_visible_devices, s.tensor_parallel_size) for s in p.servers] == [(30000, "0", 1), (30001, "1", 1)]
    assert all("--disable-custom-all-reduce" not in s.args for s in p.servers)
    assert all("--tensor-parallel-size" not in s.args for s in p.servers)
    assert p.servers[0].env["VLLM_CACHE_ROOT"] != p.servers[1].env["VLLM_CACHE_ROOT"]


def test_h100_plan():
    p = P(h100())
    assert len(p.servers) == 1
    s = p.servers[0]
    assert s.dtype == "bfloat16"
    assert "VLLM_ATTENTION_BACKEND" not in s.env
    assert s.env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert "hostname-unresolvable" in codes(p)
    assert s.memory.visible_gib == pytest.approx(81079 / 1024, abs=0.01)


def test_live_h100_capture_plans_like_the_fixture():
    live = load_host_facts(EXAMPLE_HOSTS / "h100-live", host="h")
    fixture = load_host_facts(EXAMPLE_HOSTS / "h100-1x", host="h")
    assert P(live).to_json() == P(fixture).to_json()
    recorded = json.loads((FIXTURES / "h100-live-plan.json").read_text())
    recorded["host"] = "h"
    assert P(live).to_json() == recorded


def test_v1_switch_removes_xformers_and_the_logits_warning():
    p = P(seed(), vllm_use_v1=True)
    assert p.servers[0].env["VLLM_USE_V1"] == "1"
    assert "VLLM_ATTENTION_BACKEND" not in p.servers[0].env
    assert "logits-processor-off" not in codes(p)


def test_p2p_ok_keeps_custom_all_reduce():
    f = seed()
    f = dataclasses.replace(f, p2p={(0, 1): "OK", (1, 0): "OK", (0, 0): "X", (1, 1): "X"})
    assert "--disable-custom-all-reduce" not in P(f, tensor_parallel_size=2).servers[0].args


def test_mixed_generations_fall_back_to_float16():
    f = seed()
    ampere = dataclasses.replace(f.gpus[1], compute_capability=(8, 6))
    f = dataclasses.replace(f, gpus=(f.gpus[0], ampere))
    assert P(f, tensor_parallel_size=2).servers[0].dtype == "float16"
    per_gpu = P(f)
    assert "VLLM_ATTENTION_BACKEND" in per_gpu.servers[0].env and "VLLM_ATTENTION_BACKEND" not in per_gpu.servers[1].env


def test_gpu_subset_and_ports():
    p = P(seed(), gpus=[1], port=31000)
    assert [(s.cuda_visible_devices, s.port) for s in p.servers] == [("1", 31000)]


def test_hostname_resolving_to_real_ip_gives_no_warning():
    f = h100()
    f = dataclasses.replace(f, net=dataclasses.replace(f.net, hostname_addresses=("192.0.2.2",)))
    assert "hostname-unresolvable" not in codes(P(f))


def test_kv_cache_too_small_suggests_a_utilization():
    model = dataclasses.replace(MINERU25_PROFILE, num_layers=2400)  # huge KV per token
    p = plan(seed(), load_settings(to_inventory(REFERENCE), "seed"), model)
    w = next(w for w in p.warnings if w.code == "kv-cache-too-small")
    assert "gpu_memory_utilization" in w.fix and "kv_cache_memory_bytes" in w.fix


def test_no_memory_for_kv_cache_is_an_error():
    e = errors(seed(), tensor_parallel_size=2, gpu_memory_utilization=0.1)
    assert "no-memory-for-kv-cache" in e and "gpu_memory_utilization" in e["no-memory-for-kv-cache"].fix


def test_kv_cache_memory_bytes_overrides_the_rule():
    p = P(seed(), tensor_parallel_size=2, gpu_memory_utilization=0.1, kv_cache_memory_bytes=2 * 1024**3, max_model_len=16384)
    s = p.servers[0]
    assert s.memory.kv_cache_gib == 2.0 and "--kv-cache-memory-bytes" in s.args


def test_unknown_model_figures_stay_unknown():
    p = plan(h100(), load_settings({"mineru_max_model_len": 8192}, "h"), ModelFacts(name="someone/else"))
    m = p.servers[0].memory
    assert m.weights_gib is None and m.kv_cache_gib is None and m.max_concurrency is None


# ---- errors: each names the host and a fix -------------------------------------------------


def test_cpu_host_asking_for_gpus():
    for data in ({"profile": "cuda"}, {"gpus": [0]}):
        e = errors(cpu_host(), **data)
        assert "nvidia-smi" in e["no-nvidia-smi"].message and e["no-nvidia-smi"].fix


def test_gpu_index_missing():
    assert "gpu-index" in errors(seed(), gpus=[0, 2])


def test_tp_not_dividing():
    assert "tensor-parallel-size" in errors(seed(), tensor_parallel_size=3)
    assert "tensor-parallel-size" in errors(seed(), gpus=[0], tensor_parallel_size=2)


def test_driver_too_old():
    f = dataclasses.replace(seed(), driver_cuda=(12, 4), driver_version="550.54.15")
    e = errors(f)
    assert "driver-too-old" in e and "570" in e["driver-too-old"].fix


def test_bfloat16_on_turing():
    assert "dtype" in errors(seed(), dtype="bfloat16")


def test_port_overflow_and_port_in_use():
    assert "port" in errors(seed(), port=65535)
    f = dataclasses.replace(h100(), listening={30000: "nginx"})
    assert "port-in-use" in errors(f)
    f = dataclasses.replace(h100(), listening={30000: "python3"})  # our own server on a rerun
    P(f)


def test_full_disk():
    f = h100()
    f = dataclasses.replace(f, os=dataclasses.replace(f.os, disks=(Disk("/", 100 * 1024**3, 2 * 1024**3),)))
    e = errors(f)
    assert "disk-space" in e and "/" in e["disk-space"].message


def test_nvidia_smi_failing():
    f = dataclasses.replace(h100(), gpus=(), nvidia_smi_error="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    assert "nvidia-smi-failed" in errors(f)


# ---- cpu profile -----------------------------------------------------------------------------


def test_cpu_profile():
    p = P(cpu_host(), max_model_len=4096)
    assert p.profile == "cpu" and len(p.servers) == 1
    s = p.servers[0]
    assert s.env["VLLM_USE_V1"] == "1" and "VLLM_ATTENTION_BACKEND" not in s.env
    assert s.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert s.env["GLIBC_TUNABLES"] == "glibc.rtld.execstack=2"
    assert "CUDA_VISIBLE_DEVICES" not in s.env and "PYTORCH_CUDA_ALLOC_CONF" not in s.env
    assert "--gpu-memory-utilization" not in s.args


def test_cpu_rejects_v0_and_tp():
    assert "v0-on-cpu" in errors(cpu_host(), vllm_use_v1=False)
    assert "tensor-parallel-size" in errors(cpu_host(), tensor_parallel_size=2)


def test_cpu_refuses_enforce_eager_which_crashes_the_cpu_build():
    """Seen on the sandbox: vLLM 0.10.2 CPU + --enforce-eager runs Qwen2-VL's mrope through triton and exits at start."""
    e = errors(cpu_host(), enforce_eager=True)["enforce-eager-on-cpu"]
    assert "mineru_enforce_eager" in e.fix and "triton" in e.message
    assert P(cpu_host(), max_model_len=4096).servers  # without it the CPU plan stands
    assert "--enforce-eager" in P(h100(), enforce_eager=True).servers[0].args  # on GPUs it is a plain vLLM flag


def test_cpu_needs_new_libstdcxx():
    assert "glibcxx-too-old" in errors(dataclasses.replace(cpu_host(), glibcxx="3.4.30"))


def test_plan_is_pure_and_deterministic():
    a, b = P(seed(), **REFERENCE).to_json(), P(seed(), **REFERENCE).to_json()
    assert a == b
    assert json.dumps(a)  # serialisable


def test_host_python_must_match_the_lock():
    e = errors(dataclasses.replace(seed(), python_version=(3, 10)))
    assert "python-version" in e and "3.12" in e["python-version"].message
    P(dataclasses.replace(seed(), python_version=(3, 12)))
    P(dataclasses.replace(cpu_host(), python_version=(3, 13)), max_model_len=4096)


def test_lock_python_matches_the_committed_locks():
    from mineru_fleet.core.planner import LOCK_PYTHON
    from tests.conftest import REPO

    for profile, (major, minor) in LOCK_PYTHON.items():
        assert f"--python-version {major}.{minor} " in (REPO / "locks" / f"{profile}.txt").read_text()


@pytest.mark.parametrize("host", ["h100-1x", "h100-live", "seed-2x2080ti"])
def test_default_plan_for_the_real_model_knows_every_figure(host):
    """With max_model_len unset, the built-in MinerU2.5 profile's context length (32768) fills every figure."""
    p = P(load_host_facts(EXAMPLE_HOSTS / host, host="h"))
    assert "max-model-len-unknown" not in codes(p)
    for sv in p.servers:
        mem = sv.memory
        assert None not in (mem.visible_gib, mem.budget_gib, mem.weights_gib, mem.kv_cache_gib, mem.kv_cache_tokens, mem.max_concurrency)
        assert mem.max_model_len == 32768 and mem.max_model_len_from == "model"
        assert mem.max_concurrency == pytest.approx(mem.kv_cache_tokens / 32768, abs=0.01)


def test_real_2x_h200_capture():
    """A capture of a lent 2x H200 host: CUDA-visible memory is exactly what the host's torch reported."""
    facts = load_host_facts(EXAMPLE_HOSTS / "h200-2x", host="h")
    torch_total = 150109880320  # examples/hosts/h200-2x/nccl.txt: torch.cuda.get_device_properties(i).total_memory
    assert str(torch_total) in (EXAMPLE_HOSTS / "h200-2x" / "nccl.txt").read_text()
    p = P(facts)
    assert [s.cuda_visible_devices for s in p.servers] == ["0", "1"]  # one server per GPU by default
    for s in p.servers:
        assert s.memory.visible_gib == pytest.approx(torch_total / 2**30, abs=0.005)
        assert s.dtype == "bfloat16" and "VLLM_ATTENTION_BACKEND" not in s.env
    tp = P(facts, tensor_parallel_size=2)
    (s,) = tp.servers
    assert s.cuda_visible_devices == "0,1"
    assert "--disable-custom-all-reduce" not in s.args  # NVLink: P2P OK both ways
    assert "--disable-custom-all-reduce" in P(seed(), tensor_parallel_size=2).servers[0].args  # the 2080 Ti pair has none


def test_extra_args_reach_the_command_on_cpu_and_cuda_hosts(hosts_dir, tmp_path):
    """mineru_extra_args is appended, as given, to every planned server's arguments, whatever the profile."""
    extra = ["--max-num-batched-tokens", "8192"]
    cuda = P(load_host_facts(EXAMPLE_HOSTS / "h100-1x", host="h"), extra_args=extra)
    assert all(s.args[-2:] == extra for s in cuda.servers)
    cpu_facts = tmp_path / "cpu"
    cpu_facts.mkdir()
    for name in ("os.txt", "extra.txt"):  # the same host without nvidia-smi
        (cpu_facts / name).write_text((EXAMPLE_HOSTS / "h100-1x" / name).read_text())
    cpu = P(load_host_facts(cpu_facts, host="h"), extra_args=extra, profile="cpu")
    assert cpu.profile == "cpu" and cpu.servers[0].args[-2:] == extra
