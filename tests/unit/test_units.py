"""Templates and the small host-side scripts (pure parts)."""

import pytest

from mineru_fleet.controller.factsdir import load_host_facts
from mineru_fleet.onhost.gpucheck import problems
from mineru_fleet.core.planner import plan
from mineru_fleet.onhost.ready import url_from_env
from mineru_fleet.core.settings import load_settings
from mineru_fleet.core.units import envquote, parse_env_file, render_env_file, render_unit
from mineru_fleet.paths import EXAMPLE_HOSTS


def seed_plan(**data):
    s = load_settings({"mineru_tensor_parallel_size": 2, **data}, "seed")
    return plan(load_host_facts(EXAMPLE_HOSTS / "seed-2x2080ti"), s), s


def test_env_file_is_exactly_the_plan():
    p, _ = seed_plan()
    sv = p.servers[0]
    env = parse_env_file(render_env_file(sv, "seed"))
    import shlex

    assert shlex.split(env.pop("MINERU_VLLM_ARGS")) == sv.args
    assert env == sv.env


def test_envquote_escapes_and_refuses_newlines():
    assert parse_env_file("K=" + envquote('a "b" \\c')) == {"K": 'a "b" \\c'}
    with pytest.raises(ValueError):
        envquote("a\nb")


def test_unit_cuda_vs_cpu_devices():
    p, s = seed_plan()
    cuda = render_unit(p, s)
    assert "DeviceAllow=char-nvidia-uvm rw" in cuda and "PrivateDevices=no" in cuda
    p.profile = "cpu"
    cpu = render_unit(p, s)
    assert "PrivateDevices=yes" in cpu and "nvidia" not in cpu


def test_unit_hardening_and_runtime_paths():
    p, s = seed_plan()
    u = render_unit(p, s)
    for line in ("User=mineru", "NoNewPrivileges=yes", "ProtectSystem=strict", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                 "Restart=on-failure", "StartLimitBurst=3", "EnvironmentFile=/etc/mineru-fleet/mineru-vllm@%i.env",
                 "ExecStart=/opt/mineru-fleet/current/venv/bin/mineru-vllm-server $MINERU_VLLM_ARGS"):
        assert line in u
    # options vLLM cannot run under must not creep in
    for bad in ("ProcSubset=pid", "MemoryDenyWriteExecute", "~@resources"):
        assert bad not in u


def test_no_secret_in_unit_or_env():
    p, s = seed_plan()
    text = render_unit(p, s) + render_env_file(p.servers[0], "seed")
    assert "TOKEN" not in text.upper() and "API_KEY" not in text.upper()


def test_ready_url_from_env():
    assert url_from_env({"MINERU_VLLM_ARGS": "--model /m --host 0.0.0.0 --port 30001"}) == "http://127.0.0.1:30001"
    assert url_from_env({}) == "http://127.0.0.1:30000"


def test_gpucheck_verdicts():
    h100 = {"torch": "2.11.0+cu130", "cuda_available": True, "nccl": "2.28.9", "devices": [{"index": 0}]}
    assert problems(h100, 1, "2.28.9") == []
    assert any("NCCL 2.28.9" in p and "2.27.3" in p for p in problems(h100, 1, "2.27.3"))
    assert any("sees 1 GPU" in p for p in problems(h100, 2, None))
    assert any("cannot use CUDA" in p for p in problems({"cuda_available": False, "devices": []}, 1, None))


def test_ready_gives_up_when_the_server_process_is_gone():
    import subprocess
    import sys

    from mineru_fleet.onhost.ready import wait_ready

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    ok, msg, waited = wait_ready("http://127.0.0.1:9", timeout=60, chat=False, interval=0.1, pid=p.pid)
    assert not ok and "exited" in msg and waited < 10


def test_network_allow_list_in_the_unit_only_when_asked():
    p, s = seed_plan()
    assert p.ip_address_allow is None and "IPAddressDeny" not in render_unit(p, s)
    assert "api-open" in {w.code for w in p.warnings}
    p, s = seed_plan(mineru_client_networks=["10.20.0.0/16"], mineru_balancers=["192.0.2.10"])
    unit = render_unit(p, s)
    assert "IPAddressDeny=any" in unit
    assert "IPAddressAllow=localhost 192.168.1.23/32 192.0.2.10/32 10.20.0.0/16" in unit
    assert "api-open" not in {w.code for w in p.warnings}
    p, s = seed_plan(mineru_host="127.0.0.1")
    assert "api-open" not in {w.code for w in p.warnings}
