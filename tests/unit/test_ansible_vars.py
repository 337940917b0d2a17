"""The Ansible comparison bench (bench/ansible/): the playbook's inputs come from our plan and renderer, so they cannot drift."""

import importlib.util
import re

from mineru_fleet.controller import modelstore
from mineru_fleet.controller.factsdir import load_host_facts
from mineru_fleet.core.planner import plan
from mineru_fleet.core.settings import load_settings
from mineru_fleet.core.units import env_file_path, parse_env_file, render_env_file, render_unit
from mineru_fleet.paths import EXAMPLE_HOSTS, REPO

ANSIBLE = REPO / "bench" / "ansible"


def load_hostvars():
    spec = importlib.util.spec_from_file_location("bench_ansible_hostvars", ANSIBLE / "hostvars.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MANIFEST = {"files": [{"path": "config.json", "sha256": "a" * 64, "size": 10},
                      {"path": "sub/dir/weights.bin", "sha256": "b" * 64, "size": 2 << 30}]}
SOURCES = {"uv": "/c/uv", "ready": "/c/ready.py", "gpucheck": "/c/gpucheck.py", "lock": "/c/cpu.txt", "model": "/c/cache/m/r"}


def two_server_plan():
    s = load_settings({"mineru_service_user": "svc", "mineru_state_dir": "/srv/mf", "mineru_model_revision": "v1"}, "seed")
    return plan(load_host_facts(EXAMPLE_HOSTS / "seed-2x2080ti"), s), s


def test_vars_are_our_rendered_files_and_paths():
    hv = load_hostvars()
    p, s = two_server_plan()
    assert len(p.servers) == 2
    v = hv.host_vars(p, s, "seed", MANIFEST, SOURCES, "cuda-0123456789ab")
    assert v["mf_unit"] == {"dest": "/etc/systemd/system/mineru-vllm@.service", "content": render_unit(p, s)}
    for sv, got in zip(p.servers, v["mf_servers"], strict=True):
        assert got["env_file"] == env_file_path(sv)
        assert got["env_content"] == render_env_file(sv, "seed")
        assert parse_env_file(got["env_content"])["CUDA_VISIBLE_DEVICES"] == sv.env["CUDA_VISIBLE_DEVICES"]
        assert (got["instance"], got["port"], got["cache"]) == (f"mineru-vllm@{sv.name}.service", sv.port, f"/srv/mf/cache/{sv.name}")
    assert v["mf_user"] == "svc" and v["mf_home"] == "/srv/mf/home"
    f = modelstore.folders(s, p.model_dir)
    assert v["mf_model"]["final"] == f["final"] and v["mf_model"]["parent"] == f["parent"]
    assert v["mf_model"]["dirs"] == [f["final"], f"{f['final']}/sub/dir"]
    assert [e["sha256"] for e in v["mf_model"]["files"]] == ["a" * 64, "b" * 64]
    assert v["mf_release"]["marker"] == "/opt/mineru-fleet/releases/cuda-0123456789ab/venv/.mineru-fleet-complete"


def test_marker_name_is_the_runtime_roles():
    from roles.runtime import COMPLETE

    assert load_hostvars().COMPLETE == COMPLETE


def test_playbook_uses_only_vars_we_build():
    hv = load_hostvars()
    p, s = two_server_plan()
    built = set(hv.host_vars(p, s, "seed", MANIFEST, SOURCES, "r"))
    text = (ANSIBLE / "converge.yml").read_text()
    used = set(re.findall(r"\b(mf_[a-z_]+)\b", text))
    registered = set(re.findall(r"register:\s*(mf_[a-z_]+)", text))
    assert used - registered <= built, used - registered - built
    assert built <= used, built - used  # nothing built is left unused
    # builtin modules only, and no shell
    modules = set(re.findall(r"^\s+(ansible\.\w+\.\w+):", text, re.M))
    assert modules and all(m.startswith("ansible.builtin.") for m in modules)
    assert not modules & {"ansible.builtin.shell", "ansible.builtin.command", "ansible.builtin.raw"}
