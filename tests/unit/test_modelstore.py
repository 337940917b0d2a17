"""The model prefetch's pure parts: selection, verification, transfer and free-space math, revision
warnings, the token's handling, atomic install and pruning; plus the real client against the local hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mineru_fleet.onhost import modelfetch
from mineru_fleet.sandbox import modelhub
from mineru_fleet.controller import modelstore
from mineru_fleet.paths import EXAMPLE_HOSTS
from mineru_fleet.core.settings import Settings, SettingsError, load_settings


def entry(path, data: bytes):
    import hashlib

    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


FILES = {"config.json": b"{}", "model.safetensors": b"w" * 1000, "sub/tok.json": b"t" * 10}
MANIFEST = {"files": [entry(p, d) for p, d in sorted(FILES.items())], "size": 1012}


def write(folder: Path, files=FILES) -> Path:
    for p, d in files.items():
        (folder / p).parent.mkdir(parents=True, exist_ok=True)
        (folder / p).write_bytes(d)
    return folder


def test_select_applies_allow_and_ignore_like_snapshot_download():
    hub = [{"Path": p, "Size": len(d), "Sha256": "x", "Type": "blob"} for p, d in FILES.items()]
    hub.append({"Path": "sub", "Type": "tree", "Size": 0})
    assert [e["path"] for e in modelfetch.select(hub, None, None)] == sorted(FILES)
    assert [e["path"] for e in modelfetch.select(hub, ["*.json"], None)] == ["config.json", "sub/tok.json"]
    assert [e["path"] for e in modelfetch.select(hub, None, ["sub/*"])] == ["config.json", "model.safetensors"]


def test_verify_names_missing_wrong_size_and_wrong_hash(tmp_path):
    write(tmp_path)
    assert modelfetch.verify(tmp_path, MANIFEST) == []
    (tmp_path / "config.json").unlink()
    (tmp_path / "sub/tok.json").write_bytes(b"T" * 10)
    (tmp_path / "model.safetensors").write_bytes(b"w" * 999)
    problems = modelfetch.verify(tmp_path, MANIFEST)
    assert problems == ["missing config.json", "size model.safetensors: 999 != 1000", "sha256 sub/tok.json: mismatch"]


def test_parse_state_and_transfer_plan():
    sha = {e["path"]: e["sha256"] for e in MANIFEST["files"]}
    out = "@avail 5000000\n@dir final\n" + "".join(f"@final {h}  ./{p}\n" for p, h in sha.items())
    st = modelstore.parse_state(out)
    assert st.avail == 5000000 and st.final == sha and st.staging is None
    assert modelstore.transfer_plan(MANIFEST, st, 1).up_to_date
    # a fresh host: everything goes to staging
    tp = modelstore.transfer_plan(MANIFEST, modelstore.parse_state("@avail 10\n"), 0)
    assert not tp.up_to_date and not tp.seed_from_final and [e["path"] for e in tp.send] == sorted(FILES)
    assert tp.bytes_needed == 1012
    # a corrupt file: staging starts as a copy, only that file travels
    bad = dict(sha, **{"model.safetensors": "0" * 64})
    tp = modelstore.transfer_plan(MANIFEST, modelstore.HostModelState(avail=1, final=bad), 1)
    assert tp.seed_from_final and [e["path"] for e in tp.send] == ["model.safetensors"]
    assert tp.bytes_to_write == 1012 and tp.bytes_needed == 1012 + (1 << 20)
    # an interrupted run: staging holds two of three files, the third travels (resume)
    part = {k: v for k, v in sha.items() if k != "sub/tok.json"}
    tp = modelstore.transfer_plan(MANIFEST, modelstore.HostModelState(avail=1, final=None, staging=part), 0)
    assert [e["path"] for e in tp.send] == ["sub/tok.json"] and tp.bytes_to_write == 10


def test_space_error_names_host_path_and_space():
    tp = modelstore.TransferPlan(False, bytes_to_write=2 << 30, bytes_needed=(2 << 30) + (512 << 20))
    msg = modelstore.space_error("gpu-1", "/var/lib/mineru-fleet/models/O/M", 1 << 30, tp)
    assert msg.startswith("gpu-1: not enough free space for the model at /var/lib/mineru-fleet/models/O/M: 2.5 GiB needed")
    assert "1.0 GiB free" in msg
    assert modelstore.space_error("gpu-1", "/x", 3 << 30, tp) is None


@pytest.mark.parametrize("rev,warn", [("master", True), ("main", True), ("v1.0.0", False), ("0f3c9a1", False)])
def test_unpinned_revision_warning(rev, warn):
    codes = [f.code for f in modelstore.revision_findings(Settings(model_revision=rev))]
    assert codes == (["unpinned-model-revision"] if warn else [])


def test_hub_branch_warns_even_with_an_unusual_name():
    codes = [f.code for f in modelstore.revision_findings(Settings(model_revision="release"), {"is_branch": True})]
    assert codes == ["unpinned-model-revision"]


def test_token_file_must_be_private(tmp_path):
    f = tmp_path / "token"
    f.write_text("secret-token\n")
    f.chmod(0o644)
    with pytest.raises(modelstore.ModelStoreError, match="chmod 600"):
        modelstore.token_file_ok(str(f))
    f.chmod(0o600)
    assert modelstore.token_file_ok(str(f)) == str(f)
    with pytest.raises(modelfetch.FetchError):
        f.chmod(0o640)
        modelfetch.read_token(str(f))


def test_token_is_never_rendered(tmp_path, monkeypatch):
    from mineru_fleet.core.hostfacts import build_host_facts
    from mineru_fleet.core.planner import plan
    from mineru_fleet.core.units import render_env_file, render_unit

    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "tok-SECRET-123")
    s = Settings(profile="cpu", model_id="mineru-fleet/tiny", model_revision="v1")
    shared = EXAMPLE_HOSTS
    from mineru_fleet.controller.factsdir import read_facts_dir

    folder = next(p for p in sorted(shared.iterdir()) if (p / "os.txt").is_file())
    facts = build_host_facts(folder.name, read_facts_dir(folder))
    p = plan(facts, Settings(**{**s.model_dump(), "profile": "auto"}))
    text = render_unit(p, s) + "".join(render_env_file(srv, p.host) for srv in p.servers)
    assert "tok-SECRET-123" not in text
    assert "tok-SECRET-123" not in modelstore.redact("error: bad token tok-SECRET-123")
    assert "MODELSCOPE_API_TOKEN" not in modelstore.fetch_env(s, "hub:1").keys() - os.environ.keys()


def test_token_is_not_an_inventory_variable():
    with pytest.raises(SettingsError, match="unknown variable 'mineru_modelscope_token'"):
        load_settings({"mineru_modelscope_token": "x"}, "h")
    with pytest.raises(SettingsError, match="looks like a secret"):
        load_settings({"mineru_extra_env": {"MODELSCOPE_API_TOKEN": "x"}}, "h")


def test_install_is_verified_atomic_and_keeps_two_revisions(tmp_path):
    parent = tmp_path / "models" / "o" / "m"
    parent.mkdir(parents=True)
    man = tmp_path / "manifest.json"
    man.write_text(json.dumps(MANIFEST))
    for i, rev in enumerate(["r1", "r2", "r3"]):
        staging = write(parent / f".{rev}.partial")
        (staging / "._____temp").mkdir()
        modelfetch.install(man, staging, parent / rev, keep=2)
        os.utime(parent / rev / modelfetch.MARKER, (1000 + i, 1000 + i))
    assert sorted(p.name for p in parent.iterdir()) == ["r2", "r3"]
    assert not (parent / "r3" / "._____temp").exists() and (parent / "r3" / modelfetch.MANIFEST).is_file()
    # a bad staging folder is never installed
    staging = write(parent / ".r4.partial", {**FILES, "config.json": b"{!"})
    with pytest.raises(modelfetch.FetchError, match="sha256 config.json"):
        modelfetch.install(man, staging, parent / "r4")
    assert not (parent / "r4").exists()
    # a repair replaces the folder in one rename
    staging = write(parent / ".r3.partial")
    modelfetch.install(man, staging, parent / "r3")
    assert modelfetch.verify(parent / "r3", MANIFEST) == [] and not staging.exists()


def test_real_client_against_the_local_hub(tmp_path):
    """modelscope 1.30.0's snapshot_download, unpatched, over HTTPS with the test CA; a private model needs the token."""
    src = write(tmp_path / "src")
    modelhub.publish(tmp_path / "root", "org/m", "v1", src)
    with modelhub.Hub(tmp_path / "root", tmp_path / "certs") as hub:
        env = {**os.environ, "MODELSCOPE_DOMAIN": hub.domain(), "REQUESTS_CA_BUNDLE": str(hub.ca)}
        env.pop("MODELSCOPE_API_TOKEN", None)
        cmd = [sys.executable, str(modelstore.FETCH_SCRIPT), "fetch", "--model-id", "org/m", "--revision", "v1",
               "--local-dir", str(tmp_path / "dl")]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout.splitlines()[-1])["size"] == 1012
        assert hub.state.stats()["file_bytes"] == 1012
        assert modelfetch.verify(tmp_path / "dl", MANIFEST) == []
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)  # cached: nothing fetched again
        assert r.returncode == 0 and hub.state.stats()["file_bytes"] == 1012
        (tmp_path / "dl" / "model.safetensors").write_bytes(b"X" * 1000)  # a corrupt controller cache is fetched again
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 0 and hub.state.stats()["file_bytes"] == 2012, r.stderr[-2000:]
        assert modelfetch.verify(tmp_path / "dl", MANIFEST) == []
        r = subprocess.run([*cmd[:6], "v2", *cmd[7:]], env=env, capture_output=True, text=True)
        assert r.returncode == 3 and "has no revision 'v2'" in r.stderr and "v1" in r.stderr
        # private
        modelhub.set_private(tmp_path / "root", "org/m", "tok-abc")
        cmd[-1] = str(tmp_path / "dl2")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 3
        r = subprocess.run(cmd, env={**env, "MODELSCOPE_API_TOKEN": "tok-abc"}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "tok-abc" not in r.stdout + r.stderr


def test_install_never_prunes_a_revision_a_server_loads(tmp_path):
    """A model-only deploy (or a failed one) may install two new revisions while the server still loads an old
    one: the revision an environment file names stays, whatever its age."""
    parent = tmp_path / "models" / "o" / "m"
    parent.mkdir(parents=True)
    env_dir = tmp_path / "etc"
    env_dir.mkdir()
    man = tmp_path / "manifest.json"
    man.write_text(json.dumps(MANIFEST))
    (env_dir / "mineru-vllm@0.env").write_text(f'MINERU_VLLM_ARGS="--model {parent}/r1 --port 30000"\n')
    (env_dir / "other.conf").write_text(f"{parent}/r2\n")  # not an environment file: no protection
    for i, rev in enumerate(["r1", "r2", "r3", "r4"]):
        modelfetch.install(man, write(parent / f".{rev}.partial"), parent / rev, keep=2, env_dir=env_dir)
        os.utime(parent / rev / modelfetch.MARKER, (1000 + i, 1000 + i))
    assert sorted(p.name for p in parent.iterdir()) == ["r1", "r3", "r4"]
    assert modelfetch.in_use(env_dir, parent) == {"r1"}
    assert modelfetch.in_use(tmp_path / "nowhere", parent) == set()
    # the command line the model role runs passes the config folder
    from roles.model import install_command
    assert install_command("/b/f", {"manifest": "/m", "staging": "/s", "final": "/f"}, 2).endswith(
        "--keep 2 --in-use-env-dir /etc/mineru-fleet")


# ------------------------------------------------------------------------------------------------
# the verified-files record: which files a run hashes (pure), and the check as the fact runs it on a host
# ------------------------------------------------------------------------------------------------

SHA_A, SHA_B = "a" * 64, "b" * 64
NOW = 10_000_000_000_000


def rec(files: dict, checked_ns=NOW, digest="d1", **extra):
    """A record of ``files`` ({path: ([size, mtime_ns, ctime_ns, inode], sha256)})."""
    return {"record": modelfetch.RECORD_VERSION, "manifest": digest, "checked_ns": checked_ns, **extra,
            "files": [{"path": p, "size": st[0], "mtime_ns": st[1], "ctime_ns": st[2], "inode": st[3], "sha256": sha}
                      for p, (st, sha) in files.items()]}


OLD = NOW - 5 * modelfetch.RACY_NS
LISTING = {"config.json": [2, OLD, OLD, 11], "model.safetensors": [1000, OLD, OLD, 12]}
RECORD = rec({"config.json": (LISTING["config.json"], SHA_A), "model.safetensors": (LISTING["model.safetensors"], SHA_B)})


def test_record_vouches_for_unchanged_files_so_nothing_is_hashed():
    assert modelfetch.to_hash(RECORD, LISTING, "d1") == ("ok", [], {"config.json": SHA_A, "model.safetensors": SHA_B})


@pytest.mark.parametrize("field, value", [(0, 999), (1, OLD + 1), (2, NOW + 7), (3, 99)],
                         ids=["size", "mtime", "ctime", "inode"])
def test_a_changed_stat_field_hashes_that_file_only(field, value):
    listing = {k: list(v) for k, v in LISTING.items()}
    listing["model.safetensors"][field] = value
    assert modelfetch.to_hash(RECORD, listing, "d1") == ("ok", ["model.safetensors"], {"config.json": SHA_A})


def test_missing_and_extra_files():
    gone = {"config.json": LISTING["config.json"]}  # model.safetensors deleted: neither hashed nor vouched for
    assert modelfetch.to_hash(RECORD, gone, "d1") == ("ok", [], {"config.json": SHA_A})
    extra = {**LISTING, "extra.bin": [5, OLD, OLD, 13]}  # not in the record: hashed
    assert modelfetch.to_hash(RECORD, extra, "d1") == ("ok", ["extra.bin"], {"config.json": SHA_A, "model.safetensors": SHA_B})


def test_a_racily_clean_entry_is_hashed():
    """Recorded less than RACY_NS after its ctime: a write right after the record could have kept every stat field."""
    racy = rec({"config.json": (LISTING["config.json"], SHA_A), "model.safetensors": (LISTING["model.safetensors"], SHA_B)},
               checked_ns=OLD + modelfetch.RACY_NS - 1)
    assert modelfetch.to_hash(racy, LISTING, "d1")[:2] == ("ok", ["config.json", "model.safetensors"])


def bad_records():
    good = json.loads(json.dumps(RECORD))
    cases = {"not-json": "unreadable", "a-list": [], "old-marker": {"commit": None, "at": 1.0},
             "version-2": {**good, "record": 2}, "no-checked-ns": {k: v for k, v in good.items() if k != "checked_ns"},
             "files-not-list": {**good, "files": {}}}
    for label, change in [("size-str", ("size", "2")), ("no-inode", ("inode", None)), ("sha-short", ("sha256", "ab")),
                          ("sha-upper", ("sha256", "A" * 64)), ("bool-size", ("size", True)), ("path-int", ("path", 3))]:
        r = json.loads(json.dumps(RECORD))
        r["files"][0][change[0]] = change[1]
        if change[1] is None:
            del r["files"][0][change[0]]
        cases[label] = r
    dup = json.loads(json.dumps(RECORD))
    dup["files"].append(dict(dup["files"][0]))
    cases["duplicate-path"] = dup
    return cases


@pytest.mark.parametrize("label", list(bad_records()))
def test_a_corrupt_record_hashes_every_file(label):
    status, hash_these, trusted = modelfetch.to_hash(bad_records()[label], LISTING, "d1")
    assert (status, hash_these, trusted) == ("unreadable", sorted(LISTING), {})


def test_no_record_or_another_manifest_hashes_every_file():
    assert modelfetch.to_hash(None, LISTING, "d1") == ("none", sorted(LISTING), {})
    assert modelfetch.to_hash(RECORD, LISTING, "d2") == ("other-manifest", sorted(LISTING), {})


def test_manifest_digest_covers_path_size_and_sha():
    d = modelfetch.manifest_digest(MANIFEST["files"])
    assert d == modelfetch.manifest_digest(list(reversed(MANIFEST["files"])))  # order does not matter
    for k, v in (("path", "x.json"), ("size", 3), ("sha256", "0" * 64)):
        assert modelfetch.manifest_digest([{**MANIFEST["files"][0], k: v}, *MANIFEST["files"][1:]]) != d


def run_check(final: Path, mode="record", manifest=MANIFEST, env=None) -> modelstore.HostModelState:
    """The ModelState fact's command, as the host runs it (sh, python3 -c), parsed like the fact does."""
    cmd = modelstore.state_command(str(final), str(final.parent / f".{final.name}.partial"), mode,
                                   modelfetch.manifest_digest(manifest["files"]))
    r = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return modelstore.parse_state(r.stdout)


def installed(tmp_path: Path, name="r1") -> Path:
    man = tmp_path / "manifest.json"
    man.write_text(json.dumps(MANIFEST))
    staging = write(tmp_path / f".{name}.partial")
    modelfetch.install(man, staging, tmp_path / name)
    return tmp_path / name


def test_check_after_install_hashes_nothing_and_finds_an_in_place_rewrite(tmp_path):
    final = installed(tmp_path)
    sha = {e["path"]: e["sha256"] for e in MANIFEST["files"]}
    st = run_check(final)
    assert (st.record, st.stale, st.hashed, st.hashed_bytes, st.final) == ("ok", 0, 0, 0, sha)
    assert modelstore.transfer_plan(MANIFEST, st, 0).up_to_date and not modelstore.record_is_stale(st)
    assert modelstore.check_summary(st, "record") == "model check (record): 0 of 3 file(s) hashed (0 B), record ok"
    # rewritten in place, same size, mtime put back: the ctime gives it away
    w = final / "model.safetensors"
    before = w.stat()
    with open(w, "r+b") as f:
        f.seek(500)
        f.write(b"X")
    os.utime(w, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (w.stat().st_size, w.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    st = run_check(final)
    assert (st.stale, st.hashed, st.hashed_bytes) == (1, 1, 1000)
    tp = modelstore.transfer_plan(MANIFEST, st, 0)
    assert not tp.up_to_date and [e["path"] for e in tp.send] == ["model.safetensors"]
    # full: every file, whatever the record says
    st = run_check(final, "full")
    assert (st.hashed, st.stale, st.record) == (3, 1, "ok") and st.final["config.json"] == sha["config.json"]


def test_a_touched_file_is_hashed_once_then_recorded_again(tmp_path):
    final = installed(tmp_path)
    os.utime(final / "config.json")  # same bytes, new mtime/ctime
    st = run_check(final)
    assert (st.stale, st.hashed) == (1, 1) and modelstore.transfer_plan(MANIFEST, st, 0).up_to_date
    assert modelstore.record_is_stale(st)  # the role writes the record again
    man = tmp_path / "manifest.json"
    assert modelfetch.record(man, final)["hashed"] == 1
    st = run_check(final)
    assert (st.stale, st.hashed, st.record) == (0, 0, "ok") and not modelstore.record_is_stale(st)


def test_a_folder_without_a_record_is_hashed_whole_and_recorded(tmp_path):
    final = installed(tmp_path)
    (final / modelfetch.MARKER).write_text(json.dumps({"commit": None, "at": 1.0}))  # an install of an older version
    st = run_check(final)
    assert (st.record, st.hashed) == ("unreadable", 3) and modelstore.record_is_stale(st)
    (final / modelfetch.MARKER).unlink()
    st = run_check(final)
    assert (st.record, st.hashed) == ("none", 3)
    man = tmp_path / "manifest.json"
    assert modelfetch.record(man, final)["hashed"] == 3
    assert run_check(final).hashed == 0
    # another file list (a branch revision that moved): everything is hashed again
    other = {"files": [*MANIFEST["files"][:2], entry("sub/tok.json", b"u" * 10)]}
    st = run_check(final, manifest=other)
    assert (st.record, st.hashed) == ("other-manifest", 3)
    assert [e["path"] for e in modelstore.transfer_plan(other, st, 0).send] == ["sub/tok.json"]


def test_record_refuses_a_folder_that_does_not_verify(tmp_path):
    final = installed(tmp_path)
    marker = (final / modelfetch.MARKER).read_text()
    (final / "sub/tok.json").write_bytes(b"T" * 10)
    with pytest.raises(modelfetch.FetchError, match="sha256 sub/tok.json"):
        modelfetch.record(tmp_path / "manifest.json", final)
    assert (final / modelfetch.MARKER).read_text() == marker


def test_check_without_python3_hashes_every_file_with_sha256sum(tmp_path):
    final = installed(tmp_path)
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "df", "awk", "find", "xargs", "sha256sum", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    st = run_check(final, env={"PATH": str(bin_dir)})
    assert st.final == {e["path"]: e["sha256"] for e in MANIFEST["files"]} and st.hashed is None and st.avail > 0
    assert not modelstore.record_is_stale(st) and "no python3" in modelstore.check_summary(st, "record")


def test_check_program_stands_alone():
    """The fact's Python uses nothing of modelfetch.py outside its block (run isolated, from an empty folder)."""
    r = subprocess.run([sys.executable, "-I", "-c", modelstore.check_program(), "/nonexistent/a", "/nonexistent/b",
                        "record", "d"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and r.stdout == "" and not r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-I", "-c", modelstore.check_program(), "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_every_host_preparing_at_once_asks_the_hub_once(monkeypatch):
    """pyinfra prepares all hosts concurrently: the first resolve runs, the others wait for its result
    (before the lock, 6 hosts started 6 ``modelfetch.py resolve`` subprocesses at once)."""
    import threading
    import time as _time

    from mineru_fleet.controller import modelstore as ms
    from mineru_fleet.core.settings import Settings as _Settings

    calls = []

    def slow_client(settings, args):
        calls.append(args)
        _time.sleep(0.3)
        return {"files": [{"path": "config.json", "size": 2, "sha256": "0" * 64}]}

    monkeypatch.setattr(ms, "_client", slow_client)
    ms._prepare.cache_clear()
    s = _Settings(model_fetch_mode="host", model_id="org/concurrent-test", model_revision="v9")
    results = []
    threads = [threading.Thread(target=lambda: results.append(ms.prepare(s))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms._prepare.cache_clear()
    assert len(calls) == 1 and len(results) == 6 and all(r == results[0] for r in results)
