"""Compile classes and seeds: which servers may share a compiled cache, and a seed used only by its class.

The key (pure, ``mineru_fleet/core/compileclass.py``) and the on-host tool that packs and installs seeds
(``mineru_fleet/onhost/compilecache.py``) on real files: a seed of another class, of other hardware, edited,
cut short or carrying a path out of its folder is refused and writes nothing.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pwd
import tarfile
import time
from pathlib import Path

import pytest

from mineru_fleet.controller import seedstore
from mineru_fleet.core import compileclass as cc
from mineru_fleet.core.planner import ServerPlan
from mineru_fleet.core.settings import Settings
from mineru_fleet.onhost import compilecache as tool

HW = {
    "arch": "x86_64", "cpu": {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143",
                              "model name": "Intel(R) Xeon(R) Platinum 8480+"},
    "isa": ["avx2", "avx512f", "amx_tile"], "flags_sha256": "a" * 64, "cpus": 16, "os": "ubuntu 22.04", "gcc": "11.4.0",
    "gpus": [{"index": "0", "name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "driver": "550.54.15"},
             {"index": "1", "name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "driver": "550.54.15"}],
}
MODEL = {"id": "OpenDataLab/MinerU2.5-2509-1.2B", "revision": "v1.0.0", "files": "f" * 64}


def server(**kw) -> ServerPlan:
    from mineru_fleet.core.planner import MemoryPlan

    base = dict(name="0", port=30000, cuda_visible_devices="0", tensor_parallel_size=1, dtype="bfloat16",
                env={"VLLM_USE_V1": "0", "VLLM_HOST_IP": "10.0.0.5", "GLOO_SOCKET_IFNAME": "eth0",
                     "VLLM_CACHE_ROOT": "/var/lib/mineru-fleet/cache/0/vllm", "CUDA_VISIBLE_DEVICES": "0"},
                args=["--model", "/var/lib/mineru-fleet/models/m/v1.0.0", "--host", "0.0.0.0", "--port", "30000",
                      "--max-num-seqs", "64", "--served-model-name", "m"],
                memory=MemoryPlan())
    base.update(kw)
    return ServerPlan(**base)


def key(sv=None, **kw) -> str:
    args = dict(profile="cuda", release="cuda-0123456789ab", model=MODEL, hardware=HW, state_dir="/var/lib/mineru-fleet")
    args.update(kw)
    return cc.compile_class(sv or server(), **args).key


BASE = key()


@pytest.mark.parametrize("change", [
    dict(release="cuda-ffffffffffff"),
    dict(model={**MODEL, "revision": "v1.0.1"}),
    dict(model={**MODEL, "files": "e" * 64}),
    dict(profile="cpu"),
    dict(state_dir="/srv/mineru"),
    dict(hardware={**HW, "cpus": 8}),
    dict(hardware={**HW, "flags_sha256": "b" * 64}),
    dict(hardware={**HW, "cpu": {**HW["cpu"], "model": "106"}}),
    dict(hardware={**HW, "os": "ubuntu 24.04"}),
    dict(hardware={**HW, "gcc": "13.2.0"}),
    dict(hardware={**HW, "gpus": [{**HW["gpus"][0], "driver": "570.86.15"}, HW["gpus"][1]]}),
    dict(hardware={**HW, "gpus": [{**HW["gpus"][0], "name": "NVIDIA H200", "compute_cap": "9.0"}, HW["gpus"][1]]}),
    dict(sv=server(args=server().args[:-4] + ["--max-num-seqs", "16", "--served-model-name", "m"])),
    dict(sv=server(env={**server().env, "VLLM_ATTENTION_BACKEND": "FLASHINFER"})),
    dict(sv=server(name="1")),
], ids=lambda c: next(iter(c)) + ":" + str(next(iter(c.values())))[:30])
def test_a_change_of_what_compiled_code_depends_on_is_another_class(change):
    assert key(**change) != BASE


@pytest.mark.parametrize("change", [
    dict(sv=server(port=30001, args=[a if a != "30000" else "30001" for a in server().args])),
    dict(sv=server(args=["--host=127.0.0.1" if a == "0.0.0.0" else a for a in server().args if a != "--host"])),
    dict(sv=server(args=[a if a != "m" else "other-name" for a in server().args])),
    dict(sv=server(env={**server().env, "VLLM_HOST_IP": "10.0.0.6", "GLOO_SOCKET_IFNAME": "ens5"})),
    dict(sv=server(env={**server().env, "VLLM_CACHE_ROOT": "/elsewhere"})),
    dict(hardware={**HW, "gpus": [HW["gpus"][0], {**HW["gpus"][1], "name": "NVIDIA A100"}]}),  # a GPU it does not use
], ids=["port", "host", "served-name", "network-env", "cache-env", "unused-gpu"])
def test_what_only_places_the_server_leaves_the_class_alone(change):
    assert key(**change) == BASE


def test_unknown_hardware_is_never_seeded():
    cls = cc.compile_class(server(), profile="cuda", release="r", model=MODEL, hardware={}, state_dir="/s")
    assert not cls.seedable and cls.parts["hardware"] == {"unknown": True}


def test_core_and_the_host_tool_compute_the_same_key_and_hardware_view():
    for gpus in ([], ["0"], ["1", "0"], ["7"]):
        assert cc.server_hardware(HW, gpus) == tool.for_server(HW, gpus)
    parts = cc.compile_class(server(), profile="cuda", release="r", model=MODEL, hardware=HW, state_dir="/s").parts
    assert cc.class_key(parts) == tool.class_key(parts)


def test_plan_servers_get_their_class_folder():
    from mineru_fleet.core.modelinfo import ModelFacts
    from mineru_fleet.core.planner import Plan

    sv = server()
    p = Plan(host="h", profile="cuda", servers=[sv], warnings=[], model=ModelFacts(name="m"), model_dir="/m")
    cls = cc.compile_class(sv, profile="cuda", release="r", model=MODEL, hardware=HW, state_dir="/var/lib/mineru-fleet")
    out = cc.with_compile_classes(p, {"0": cls}, "/var/lib/mineru-fleet")
    d = f"/var/lib/mineru-fleet/cache/0/compile/{cls.key}"
    env = out.servers[0].env
    assert (env["VLLM_CACHE_ROOT"], env["TORCHINDUCTOR_CACHE_DIR"], env["TRITON_CACHE_DIR"]) == (f"{d}/vllm", f"{d}/inductor", f"{d}/triton")
    assert out.compile_classes == {"0": cls} and out.servers[0].rows[-1].value == cls.key
    assert json.loads(cls.class_json())["key"] == cls.key


def test_hardware_of_this_machine_names_its_processor():
    hw = tool.hardware()
    assert hw["arch"] and hw["cpus"] == len(os.sched_getaffinity(0)) and len(hw["flags_sha256"]) == 64


# ------------------------------------------------------------------------------------------------
# pack / install / prune on real files
# ------------------------------------------------------------------------------------------------

ME = pwd.getpwuid(os.getuid()).pw_name


def class_folder(tmp_path: Path, parts: dict | None = None, complete: bool = True) -> tuple[Path, str]:
    parts = parts or {"format": 1, "release": "cpu-x", "hardware": tool.for_server(tool.hardware(), None)}
    k = tool.class_key(parts)
    d = tmp_path / "origin" / k
    (d / "inductor" / "ab").mkdir(parents=True)
    (d / "inductor" / "ab" / "cabc.so").write_bytes(b"\x7fELF kernel")
    (d / "inductor" / "fxgraph" / "xy").mkdir(parents=True)
    (d / "inductor" / "fxgraph" / "xy" / "entry").write_bytes(b"graph")
    (d / "inductor" / "locks").mkdir()
    (d / "inductor" / "locks" / "cabc.lock").write_text("")
    (d / "vllm").mkdir()
    (d / "vllm" / "gpu_p2p_access_cache_for_0,1.json").write_text("{}")
    (d / tool.CLASS_FILE).write_text(json.dumps({"format": 1, "key": k, "parts": parts}))
    if complete:
        (d / tool.COMPLETE).write_text("")
    return d, k


def test_pack_needs_a_finished_folder(tmp_path):
    d, _ = class_folder(tmp_path, complete=False)
    with pytest.raises(tool.SeedError, match="not finished"):
        tool.pack(str(d), str(tmp_path / "seed.tar.gz"))


def test_pack_then_install_carries_the_compiled_files_only(tmp_path):
    d, k = class_folder(tmp_path)
    seed = tmp_path / "seed.tar.gz"
    n, _ = tool.pack(str(d), str(seed))
    names = tarfile.open(seed).getnames()
    assert names[0] == tool.CLASS_FILE and n == 2
    assert not [x for x in names if "locks" in x or "p2p" in x or x.endswith(tool.COMPLETE)]
    target = tmp_path / "host" / "cache" / "0" / "compile" / k
    msg = tool.install(str(seed), str(target), k, ME, None)
    assert "installed: 2 files" in msg
    assert (target / "inductor" / "ab" / "cabc.so").read_bytes() == b"\x7fELF kernel"
    assert json.loads((target / tool.SEEDED).read_text())["key"] == k
    assert not (target / tool.COMPLETE).exists()
    assert oct((target / "inductor").stat().st_mode & 0o777) == "0o700"


def test_install_into_a_folder_that_has_files_adds_and_never_replaces(tmp_path):
    d, k = class_folder(tmp_path)
    seed = tmp_path / "seed.tar.gz"
    tool.pack(str(d), str(seed))
    target = tmp_path / "t" / k
    (target / "inductor" / "ab").mkdir(parents=True)
    (target / "inductor" / "ab" / "cabc.so").write_bytes(b"mine")
    assert "1 of 2 files added" in tool.install(str(seed), str(target), k, ME, None)
    assert (target / "inductor" / "ab" / "cabc.so").read_bytes() == b"mine"
    assert (target / "inductor" / "fxgraph" / "xy" / "entry").read_bytes() == b"graph"


def _refused(tmp_path: Path, seed: Path, k: str, match: str) -> None:
    target = tmp_path / "refused" / k
    with pytest.raises(tool.SeedError, match=match):
        tool.install(str(seed), str(target), k, ME, None)
    assert not target.exists()  # nothing of a refused seed is written: no folder, no staging left behind
    assert not (target.parent.exists() and list(target.parent.glob(".*partial*")))


def test_a_seed_of_another_class_is_refused(tmp_path):
    d, k = class_folder(tmp_path)
    seed = tmp_path / "seed.tar.gz"
    tool.pack(str(d), str(seed))
    _refused(tmp_path, seed, "0" * 20, "the seed is of class")


def test_a_seed_compiled_on_other_hardware_is_refused(tmp_path):
    other = {**tool.for_server(tool.hardware(), None), "flags_sha256": "0" * 64, "isa": ["avx512f", "amx_tile"]}
    d, k = class_folder(tmp_path, parts={"format": 1, "release": "cpu-x", "hardware": other})
    seed = tmp_path / "seed.tar.gz"
    tool.pack(str(d), str(seed))
    _refused(tmp_path, seed, k, "compiled on other hardware .*flags_sha256")


def test_a_seed_whose_inputs_were_edited_is_refused(tmp_path):
    d, k = class_folder(tmp_path)
    meta = json.loads((d / tool.CLASS_FILE).read_text())
    meta["parts"]["release"] = "cpu-y"  # key left as it was
    (d / tool.CLASS_FILE).write_text(json.dumps(meta))
    seed = tmp_path / "seed.tar.gz"
    tool.pack(str(d), str(seed))
    _refused(tmp_path, seed, k, "does not hash to its key")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("name,kind", [("files/../../etc/cron.d/x", tarfile.REGTYPE), ("/etc/passwd", tarfile.REGTYPE),
                                       ("files/inductor/link", tarfile.SYMTYPE), ("other/x", tarfile.REGTYPE)])
def test_a_seed_member_outside_its_folder_or_not_a_plain_file_is_refused(tmp_path, name, kind):
    parts = {"format": 1, "hardware": tool.for_server(tool.hardware(), None)}
    k = tool.class_key(parts)
    meta = json.dumps({"format": 1, "key": k, "parts": parts}).encode()
    ci = tarfile.TarInfo(tool.CLASS_FILE)
    ci.size = len(meta)
    bad = tarfile.TarInfo(name)
    bad.type = kind
    data = b"x"
    if kind == tarfile.SYMTYPE:
        bad.linkname, data = "/etc/shadow", None
    else:
        bad.size = 1
    seed = tmp_path / "seed.tar.gz"
    _tar(seed, [(ci, meta), (bad, data)])
    _refused(tmp_path, seed, k, "outside the seed|not a plain file")


def test_the_install_command_refuses_without_failing_the_deploy(tmp_path, capsys):
    d, k = class_folder(tmp_path)
    seed = tmp_path / "seed.tar.gz"
    tool.pack(str(d), str(seed))
    target = tmp_path / "x" / k
    assert tool.main(["install", "--seed", str(seed), "--dir", str(target), "--key", "1" * 20, "--user", ME]) == 0
    assert "seed refused" in capsys.readouterr().out and not target.exists()


def test_prune_keeps_the_newest_the_protected_and_the_referenced(tmp_path):
    root = tmp_path / "compile"
    for i, name in enumerate(["a1", "b2", "c3", "d4", "e5"]):
        (root / name).mkdir(parents=True)
        os.utime(root / name, (time.time() - 100 * (5 - i),) * 2)  # e5 newest
    (root / ".x.partial-12").mkdir()
    envs = tmp_path / "etc"
    envs.mkdir()
    (envs / "mineru-vllm@0.env").write_text('TORCHINDUCTOR_CACHE_DIR="/var/lib/mineru-fleet/cache/0/compile/a1/inductor"\n')
    assert sorted(tool.prune(str(root), 2, {"b2"}, [str(envs)], dry_run=True)) == [".x.partial-12", "c3"]
    assert len(list(root.iterdir())) == 6  # a dry run removes nothing
    removed = tool.prune(str(root), 2, {"b2"}, [str(envs)])
    assert sorted(removed) == [".x.partial-12", "c3"] and sorted(p.name for p in root.iterdir()) == ["a1", "b2", "d4", "e5"]
    assert tool.prune(str(root), 2, {"b2"}, [str(envs)], dry_run=True) == []  # converged: the deploy emits no prune


def test_the_prune_fact_reads_the_dry_run(tmp_path):
    from mineru_fleet.controller.facts import PrunableClassFolders

    fact = PrunableClassFolders()
    cmd = fact.command(root=str(tmp_path / "none"), keep=3, protect="k", refs_in=["/etc/mineru-fleet"])
    import subprocess

    assert subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout == ""
    assert fact.process(["@prune ab12", "noise", "@prune .x.partial-3"]) == ["ab12", ".x.partial-3"]


# ------------------------------------------------------------------------------------------------
# the controller store
# ------------------------------------------------------------------------------------------------


def test_the_store_keeps_a_checked_seed_only(tmp_path):
    settings = Settings(compile_cache_dir=str(tmp_path / "store"))
    d, k = class_folder(tmp_path)
    seedstore.prepare_incoming(settings, k, "h1")
    incoming = seedstore.incoming_path(settings, k, "h1")
    tool.pack(str(d), str(incoming))
    good = incoming.read_bytes()
    incoming.write_bytes(good[: len(good) // 2])  # a cut-short download
    assert "refused" in seedstore.accept(settings, k, "h1") and not seedstore.seed_path(settings, k).exists()
    incoming.write_bytes(good)
    assert "refused" in seedstore.accept(settings, "2" * 20, "h1")  # stored under another class: no
    incoming.write_bytes(good)
    assert "stored" in seedstore.accept(settings, k, "h1")
    assert seedstore.seed_path(settings, k).read_bytes() == good and not incoming.exists()
    assert oct(seedstore.seed_path(settings, k).stat().st_mode & 0o777) == "0o600"
