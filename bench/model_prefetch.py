"""Hub traffic and wall time of the model prefetch: 1 and 3 hosts, `controller` and `host` modes.

    uv run python bench/model_prefetch.py [--pad-mib 256]          (root: boots sandbox hosts mp1..mp3)

The model is the tiny Qwen2-VL folder plus one random file of --pad-mib MiB (so transfer, not
overhead, dominates), published on a local HTTPS hub (mineru_fleet/sandbox/modelhub.py) that counts the
file bytes it serves. Each run starts clean (no model on the hosts, an empty controller cache) and
times `pyinfra INV tests/e2e/deploy_model_only.py` (preflight + model roles). Host mode hosts get a
small modelscope venv first (not timed). Results: a Markdown table on stdout and
bench/results/model_prefetch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mineru_fleet.core.settings import to_inventory
from mineru_fleet.sandbox import modelhub
from mineru_fleet import sandbox
from mineru_fleet.sandbox import tinymodel  # noqa: E402
from mineru_fleet.sandbox.quickstart import MODEL_DIR  # noqa: E402

MODEL = "mineru-fleet/bench-qwen2vl"
REV = "v1.0.0"
VENV_PY = "/opt/mineru-fleet/modelscope-venv/bin/python"
STATE = "/var/lib/mineru-fleet-bench"


def instance() -> sandbox.SandboxConfig:
    """The model tests' own sandbox instance (mp1..mp3 on 192.168.253.0/24, file server port 8782);
    ``MINERU_FLEET_MODEL_SANDBOX_PREFIX`` / ``_NET`` / ``_PORT`` move it (a second checkout on the same machine)."""
    env = os.environ
    return sandbox.SandboxConfig(repo=REPO, prefix=env.get("MINERU_FLEET_MODEL_SANDBOX_PREFIX", "mp"),
                                 net_prefix=env.get("MINERU_FLEET_MODEL_SANDBOX_NET", "192.168.253"),
                                 port=int(env.get("MINERU_FLEET_MODEL_SANDBOX_PORT", "8782")), run_name="run-model",
                                 inventory_path=REPO / "inventory" / "sandbox_model.py")


def inventory(path: Path, hosts, hub, mode: str, cache: Path) -> Path:
    entries = []
    for h in hosts:
        d = {**sandbox.host_data(instance(), h), "profile": "cpu", "model_id": MODEL, "model_revision": REV,
             "model_fetch_mode": mode, "modelscope_domain": hub.domain("127.0.0.1"), "modelscope_ca_bundle": str(hub.ca),
             "model_cache_dir": str(cache), "state_dir": STATE}
        if mode == "host":
            d.update(modelscope_host_domain=hub.domain(h.controller_ip), model_fetch_python=VENV_PY,
                     sandbox_modelscope_venv=True)
        entries.append((h.ip, to_inventory(d)))
    path.write_text(f"hosts = {entries!r}\n")
    return path


def deploy(inv: Path) -> float:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pyinfra", str(inv), "tests/e2e/deploy_model_only.py", "-y"], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "MODELSCOPE_LOG_LEVEL": "40"})
    if r.returncode:
        sys.exit(f"deploy failed:\n{(r.stdout + r.stderr)[-4000:]}")
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-mib", type=int, default=256)
    ap.add_argument("--modes", default="controller,host", help="comma-separated: controller, host")
    ap.add_argument("--hosts", default="1,3", help="comma-separated fleet sizes (at most 3)")
    ap.add_argument("--out", default="model_prefetch.json", help="file name under bench/results/")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    sizes = [int(n) for n in a.hosts.split(",") if n]
    cfg = instance()
    hosts = sandbox.up(3, cfg)[:3]
    work = Path(tempfile.mkdtemp(prefix="bench-prefetch-"))
    try:
        if not (MODEL_DIR / "config.json").is_file():
            tinymodel.make_tiny_qwen2vl(MODEL_DIR)
        src = work / "src"
        shutil.copytree(MODEL_DIR, src)
        with open(src / "padding.bin", "wb") as f:
            for _ in range(a.pad_mib):
                f.write(os.urandom(1 << 20))
        modelhub.publish(work / "root", MODEL, REV, src)
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        rows = []
        with modelhub.Hub(work / "root", work / "certs", ["127.0.0.1", *[h.controller_ip for h in hosts]]) as hub:
            if "host" in modes:  # host mode needs modelscope on the hosts: build the small venv once, untimed
                deploy(inventory(work / "warm.py", hosts, hub, "host", work / "cache-warm"))
            for mode in modes:
                for n in sizes:
                    for h in hosts:
                        sandbox.ssh(h.ip, f"rm -rf {STATE}", config=cfg)
                    cache = work / f"cache-{mode}-{n}"
                    hub.state.reset()
                    wall = deploy(inventory(work / f"inv-{mode}-{n}.py", hosts[:n], hub, mode, cache))
                    hub_bytes = hub.state.stats()["file_bytes"]
                    hub.state.reset()
                    rerun = deploy(inventory(work / f"inv-{mode}-{n}.py", hosts[:n], hub, mode, cache))
                    rows.append({"mode": mode, "hosts": n, "model_bytes": size, "hub_bytes": hub_bytes,
                                 "hub_x_model": round(hub_bytes / size, 3), "wall_s": round(wall, 1),
                                 "rerun_s": round(rerun, 1), "rerun_hub_bytes": hub.state.stats()["file_bytes"]})
                    print(rows[-1], flush=True)
        for h in hosts:
            sandbox.ssh(h.ip, f"rm -rf {STATE}", config=cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "bench" / "results" / a.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nmodel: {size / (1 << 20):.1f} MiB ({a.pad_mib} MiB padding + the tiny Qwen2-VL files)\n")
    print("| mode | hosts | hub bytes | x model | wall (clean) | rerun (nothing to do) | rerun hub bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['hosts']} | {r['hub_bytes']:,} | {r['hub_x_model']} | {r['wall_s']} s | {r['rerun_s']} s | {r['rerun_hub_bytes']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
