"""Compile-cache seeding on the deployed sandbox hosts (issue 14, part 3): the first server of a compile class
compiles, the controller keeps its caches, the next host of the class starts from them and compiles nothing; a
cache that does not match its class is never used -- the server compiles its own and serves.

A fresh class per run: ``mineru_extra_env`` gets a probe variable (the server's environment is part of the
class), so each test's first host really compiles, whatever an earlier run left in the controller's store.
Afterwards the hosts go back to the inventory's own class (still on disk: a warm restart).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from mineru_fleet.controller import modelstore, seedstore
from mineru_fleet.controller.gather import gather
from mineru_fleet.core import modelinfo
from mineru_fleet.core.hostfacts import build_host_facts
from mineru_fleet.core.planner import plan
from mineru_fleet.core.settings import load_settings
from mineru_fleet.core.units import parse_env_file
from mineru_fleet.onhost.ready import check_once
from mineru_fleet.sandbox import quickstart

pytestmark = pytest.mark.e2e
UNIT = "mineru-vllm@0"
COMPILED = (".so", ".cpp", ".py", ".h")  # what inductor writes when it compiles (fxgraph entries: no suffix)
RESULTS = quickstart.REPO / "bench" / "results" / "compile_cache_e2e.json"


def probe_data(tag: str) -> dict:
    return {"mineru_extra_env": {"MINERU_FLEET_CLASS_PROBE": f"{tag}-{os.getpid()}-{int(time.time())}"}}


def deploy(ip: str, data: dict | None = None) -> None:
    extra = ["--limit", ip]
    for k, v in (data or {}).items():
        extra += ["--data", f"{k}={json.dumps(v)}"]
    assert quickstart.deploy(*extra).returncode == 0, f"deploy of {ip} failed (see its output above)"


def class_key_on(h) -> str:
    env = parse_env_file(h.file(f"/etc/mineru-fleet/{UNIT}.env").content_string)
    folder = env["TORCHINDUCTOR_CACHE_DIR"].rsplit("/", 1)[0]
    assert folder.rsplit("/", 2)[-2] == "compile", env["TORCHINDUCTOR_CACHE_DIR"]
    return folder.rsplit("/", 1)[1]


def folder_of(key: str) -> str:
    return f"/var/lib/mineru-fleet/cache/0/compile/{key}"


def compiled_files(h, key: str, newer_than: str | None = None) -> set[str]:
    """Paths (relative to the class folder) of what inductor compiled there: kernels, wrappers, FX-graph entries."""
    newer = f" -newer {folder_of(key)}/{newer_than}" if newer_than else ""
    out = h.check_output(f"cd {folder_of(key)} && find . -type f{newer} -not -path '*/locks/*' -printf '%P\\n'")
    return {p for p in out.splitlines() if p.endswith(COMPILED) or "/fxgraph/" in p}


def planned_key(ti, ip: str, data: dict) -> str:
    """The class the deploy will give ``ip``'s server with ``data`` (the preflight's own computation)."""
    g = gather(str(quickstart.INVENTORY), override_data=data)[ip]
    assert g.error is None, g.error
    s = load_settings({**g.data, **data}, ip)
    model = modelinfo.from_model_dir(quickstart.MODEL_DIR, s.model_id)
    hw = json.loads(ti[ip].check_output("python3 /opt/mineru-fleet/bin/mineru-fleet-compilecache hardware"))
    p = seedstore.with_classes(plan(build_host_facts(ip, g.files), s, model), s, hw, modelstore.prepare(s).manifest)
    return p.compile_classes["0"].key


def settings_of(ip: str):
    (entry,) = [g for n, g in gather(str(quickstart.INVENTORY)).items() if n == ip]
    return load_settings(entry.data, ip)


def journal_since(h, since: str) -> str:
    return h.check_output(f"journalctl --no-pager -o cat --since @{since}")


def warmup_seconds(h, since: str) -> float | None:
    for line in reversed(journal_since(h, since).splitlines()):
        if "init engine (profile, create kv cache, warmup model) took" in line:
            return float(line.rsplit("took", 1)[1].split()[0])
    return None


def _record(name: str, row: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[name] = row
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _back_to_the_inventory_class(hosts):
    yield
    assert quickstart.deploy().returncode == 0  # every host back on the inventory's own class (a warm restart)


def test_first_host_of_a_class_compiles_and_the_next_starts_from_its_caches(ti, hosts):
    a, b = hosts[0], hosts[1]
    data = probe_data("seed")
    since = str(int(time.time()))
    deploy(a.ip, data)
    key = class_key_on(ti[a.ip])
    assert key == planned_key(ti, a.ip, data)
    store = seedstore.seed_path(settings_of(a.ip), key)
    assert store.is_file(), f"the controller kept no seed of class {key}"
    ha = ti[a.ip]
    assert ha.file(f"{folder_of(key)}/.complete").exists and not ha.file(f"{folder_of(key)}/seeded.json").exists
    compiled_a = compiled_files(ha, key)
    assert any(p.endswith(".so") for p in compiled_a), compiled_a  # it really compiled C++ kernels
    cold = warmup_seconds(ha, since)

    since_b = str(int(time.time()))
    deploy(b.ip, data)
    hb = ti[b.ip]
    assert class_key_on(hb) == key
    seeded = json.loads(hb.file(f"{folder_of(key)}/seeded.json").content_string)
    assert seeded["seed_sha256"] == hashlib.sha256(store.read_bytes()).hexdigest()
    # it compiled nothing: every compiled file is the seed's, none was written after the seed went in
    assert compiled_files(hb, key) == compiled_a
    assert compiled_files(hb, key, newer_than="seeded.json") == set()
    assert check_once(f"http://{b.ip}:30000", chat=True)[0]
    warm = warmup_seconds(hb, since_b)
    _record("seeded", {"class": key, "compiled_files": len(compiled_a), "cold_warmup_s": cold, "seeded_warmup_s": warm})


def test_a_cache_that_does_not_match_its_class_is_never_used(ti, hosts):
    """A seed of another class, planted in the controller's store under this server's class: the host refuses it
    (its class.json names the other class), the server compiles its own cache and serves."""
    a, c = hosts[0], hosts[2]
    data = probe_data("mismatch")
    key = planned_key(ti, c.ip, data)
    s = settings_of(c.ip)
    others = [p for p in seedstore.store_dir(s).glob(f"*/{seedstore.SEED}") if p.parent.name != key]
    assert others, "no seed of another class in the store (the test before this one makes one)"
    planted = seedstore.seed_path(s, key)
    planted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(others[0], planted)
    since = str(int(time.time()))
    try:
        deploy(c.ip, data)
        hc = ti[c.ip]
        assert class_key_on(hc) == key
        log = journal_since(hc, since)
        assert f"seed refused for {folder_of(key)}" in log and f"this server's is {key}" in log, log[-2000:]
        assert not hc.file(f"{folder_of(key)}/seeded.json").exists
        # it compiled its own: kernels written during this deploy, none of them taken from the planted seed
        own = compiled_files(hc, key)
        assert any(p.endswith(".so") for p in own)
        assert hc.check_output(f"find {folder_of(key)} -name '*.so' ! -newermt @{since} | wc -l") == "0"
        assert check_once(f"http://{c.ip}:30000", chat=True)[0]
        _record("mismatch", {"class": key, "refused": True, "compiled_files": len(own),
                             "warmup_s": warmup_seconds(hc, since)})
    finally:
        planted.unlink(missing_ok=True)
