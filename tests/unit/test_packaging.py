"""What the wheel is: the `mineru_fleet` package only (no top-level `roles`), which finds its checkout
or says how to get one. The project itself is used from a checkout (README, "What is where")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not shutil.which("uv"):
        pytest.fail("uv is not on PATH")
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("mineru_fleet-*.whl")
    return whl


def test_wheel_ships_only_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mineru_fleet"}, tops
    for sub in ("core", "onhost", "controller", "sandbox"):
        assert f"mineru_fleet/{sub}/__init__.py" in names
    assert "mineru_fleet/onhost/ready.py" in names


def test_installed_wheel_outside_a_checkout_says_how_to_get_one(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "--quiet", "--no-deps", "--python", str(venv / "bin" / "python"), str(wheel)], check=True)
    code = "from mineru_fleet.paths import checkout_problem; print(checkout_problem())"
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "used from a checkout" in r.stdout and "MINERU_FLEET_REPO" in r.stdout
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "MINERU_FLEET_REPO": str(REPO)})
    assert r.stdout.strip() == "None", r.stdout
