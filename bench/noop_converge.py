"""A no-op deploy of a large model to one host: the model check with the verified-files record vs hashing every file.

    uv run python bench/noop_converge.py [--pad-mib 2048] [--runs 3]     (root: boots one sandbox host of the
                                                                           model instance, see bench/model_prefetch.py)

The model is the tiny Qwen2-VL folder plus one random file of --pad-mib MiB, published on the local hub. One
clean deploy (`pyinfra INV tests/e2e/deploy_model_only.py`, preflight + model roles) installs it; then
--runs no-op reruns with `mineru_model_verify: full` (hash every file: what every run did before the record)
and with `record` (the default), interleaved so that a change in the machine's load hits both alike. Each
rerun's figure is its wall time and the count the model role prints (`model check (MODE): N of M file(s)
hashed`). The host-side check alone (the ModelState fact's command over SSH) and `sha256sum` of the model
folder (the fact's shell before the record) are timed too. The model files stay in the page cache (they were
just written); ``--cold`` evicts them from it before each figure (posix_fadvise DONTNEED on those files only), so
hashing reads the disk. Results: a Markdown table on stdout and bench/results/noop_converge[_cold].json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mineru_fleet import sandbox  # noqa: E402
from mineru_fleet.controller import modelstore  # noqa: E402
from mineru_fleet.core.settings import to_inventory  # noqa: E402
from mineru_fleet.onhost.modelfetch import manifest_digest  # noqa: E402
from mineru_fleet.sandbox import modelhub, tinymodel  # noqa: E402
from mineru_fleet.sandbox.quickstart import MODEL_DIR  # noqa: E402

MODEL = "mineru-fleet/bench-qwen2vl"
REV = "v1.0.0"
STATE = "/var/lib/mineru-fleet-bench"


def instance() -> sandbox.SandboxConfig:
    """The model instance of bench/model_prefetch.py and tests/e2e/test_model_prefetch.py (same env overrides)."""
    env = os.environ
    return sandbox.SandboxConfig(repo=REPO, prefix=env.get("MINERU_FLEET_MODEL_SANDBOX_PREFIX", "mp"),
                                 net_prefix=env.get("MINERU_FLEET_MODEL_SANDBOX_NET", "192.168.253"),
                                 port=int(env.get("MINERU_FLEET_MODEL_SANDBOX_PORT", "8782")), run_name="run-model",
                                 inventory_path=REPO / "inventory" / "sandbox_model.py")


def inventory(path: Path, h, hub, cache: Path, verify: str) -> Path:
    d = {**sandbox.host_data(instance(), h), "profile": "cpu", "model_id": MODEL, "model_revision": REV,
         "modelscope_domain": hub.domain("127.0.0.1"), "modelscope_ca_bundle": str(hub.ca),
         "model_cache_dir": str(cache), "state_dir": STATE, "model_verify": verify}
    path.write_text(f"hosts = {[(h.ip, to_inventory(d))]!r}\n")
    return path


def deploy(inv: Path) -> tuple[float, str]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pyinfra", str(inv), "tests/e2e/deploy_model_only.py", "-y"], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "MODELSCOPE_LOG_LEVEL": "40"})
    out = r.stdout + r.stderr
    if r.returncode:
        sys.exit(f"deploy failed:\n{out[-4000:]}")
    return time.monotonic() - t, out


def changed(out: str) -> int:
    m = re.search(r"Grand total\s+(\d+)\s+(\S+)", out)
    return 0 if not m or m.group(2) == "-" else int(m.group(2))


def ssh_time(h, command: str) -> tuple[float, str]:
    t = time.monotonic()
    cp = sandbox.ssh(h.ip, command, config=instance())
    return time.monotonic() - t, cp.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="evict the host's model files from the page cache before each "
                    "rerun and check (posix_fadvise DONTNEED on those files only), so hashing reads the disk")
    ap.add_argument("--out", default=None, help="file name under bench/results/ (default noop_converge[_cold].json)")
    a = ap.parse_args()
    a.out = a.out or ("noop_converge_cold.json" if a.cold else "noop_converge.json")
    cfg = instance()
    h = sandbox.up(1, cfg)[0]
    work = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    final = f"{STATE}/models/{MODEL}/{REV}"
    rows, fact_rows = [], []
    try:
        if not (MODEL_DIR / "config.json").is_file():
            tinymodel.make_tiny_qwen2vl(MODEL_DIR)
        src = work / "src"
        shutil.copytree(MODEL_DIR, src)
        with open(src / "padding.bin", "wb") as f:
            for _ in range(a.pad_mib):
                f.write(os.urandom(1 << 20))
        modelhub.publish(work / "root", MODEL, REV, src)
        shutil.rmtree(src)
        files = sorted(p for p in (work / "root" / MODEL / REV).rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        sandbox.ssh(h.ip, f"rm -rf {STATE}", config=cfg)
        with modelhub.Hub(work / "root", work / "certs", ["127.0.0.1", h.controller_ip]) as hub:
            cache = work / "cache"
            clean, out = deploy(inventory(work / "inv-record.py", h, hub, cache, "record"))
            print(f"clean deploy: {clean:.1f} s ({changed(out)} changed)", flush=True)
            manifest = json.loads(sandbox.ssh(h.ip, f"cat {STATE}/models/{MODEL}/.{REV}.manifest.json", config=cfg).stdout)
            digest = manifest_digest(manifest["files"])
            evict = (f"find {final} -type f -exec python3 -c 'import os, sys\nfor p in sys.argv[1:]:\n"
                     f"    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "
                     "{} +")
            for i in range(a.runs):
                for mode in ("full", "record"):
                    if a.cold:
                        sandbox.ssh(h.ip, evict, config=cfg)
                    wall, out = deploy(inventory(work / f"inv-{mode}.py", h, hub, cache, mode))
                    m = re.search(r"model check \((\w+)\): (\d+) of (\d+) file\(s\) hashed", out)
                    rows.append({"mode": mode, "run": i + 1, "wall_s": round(wall, 2), "changed": changed(out),
                                 "hashed": int(m.group(2)), "files": int(m.group(3))})
                    print(rows[-1], flush=True)
                    staging = f"{STATE}/models/{MODEL}/.{REV}.partial"
                    if a.cold:
                        sandbox.ssh(h.ip, evict, config=cfg)
                    t, fact_out = ssh_time(h, modelstore.state_command(final, staging, mode, digest))
                    st = modelstore.parse_state(fact_out)
                    fact_rows.append({"what": f"ModelState fact ({mode})", "run": i + 1, "s": round(t, 2), "hashed": st.hashed})
                if a.cold:
                    sandbox.ssh(h.ip, evict, config=cfg)
                t, _ = ssh_time(h, f"cd {final} && find . -type f ! -name '.mineru-fleet-*' -print0 | xargs -0 sha256sum >/dev/null")
                fact_rows.append({"what": "sha256sum of every file (the fact's shell before the record)", "run": i + 1,
                                  "s": round(t, 2), "hashed": len(files)})
                print(fact_rows[-3:], flush=True)
        sandbox.ssh(h.ip, f"rm -rf {STATE}", config=cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not os.environ.get("MINERU_FLEET_KEEP_SANDBOX"):
            sandbox.down(cfg)
    result = {"cold": a.cold, "model_bytes": size, "model_files": len(files), "pad_mib": a.pad_mib, "clean_deploy_s": round(clean, 1),
              "deploys": rows, "host_checks": fact_rows}
    out_path = REPO / "bench" / "results" / a.out
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")

    def med(xs):
        return round(statistics.median(xs), 2)

    print(f"\nmodel: {size:,} bytes in {len(files)} files; clean deploy {clean:.1f} s; page cache: "
          f"{'evicted before each figure' if a.cold else 'warm'}\n")
    print("| no-op rerun | files hashed | wall, each run | median | host check alone (median) |")
    print("|---|---|---|---|---|")
    for mode in ("full", "record"):
        rs = [r for r in rows if r["mode"] == mode]
        fs = [r["s"] for r in fact_rows if r["what"] == f"ModelState fact ({mode})"]
        print(f"| `mineru_model_verify: {mode}` | {rs[0]['hashed']} of {rs[0]['files']} | "
              f"{', '.join(str(r['wall_s']) for r in rs)} s | **{med([r['wall_s'] for r in rs])} s** | {med(fs)} s |")
    shas = [r["s"] for r in fact_rows if r["what"].startswith("sha256sum")]
    print(f"\n`sha256sum` of every file on the host (what the fact ran before the record): median {med(shas)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
