"""Start -> ready of a server: cold (compiles), warm restart (its own cache kept), seeded first start on a new host.

    uv run mineru-fleet sandbox run --hosts 2 --no-tests     # two deployed sandbox hosts (root)
    uv run python bench/compile_seed.py [--runs 3] [--keep-release]

Host 1 is the origin of the compile class (the controller holds its seed after the first deploy); host 2 plays
the new host. Rounds alternate, so a change in the machine's load hits every kind alike:

- cold: on host 1, the server stopped, its class folder emptied (class.json kept), ``systemctl start`` -- inductor
  compiles everything again (no seed: started by hand, not by a deploy);
- warm restart: ``systemctl restart`` on host 1 (its cache kept);
- seeded first start: host 2 wiped of everything the deploy wrote (release venv, model, units, caches, service
  user; ``--keep-release`` keeps the 7 GB venv to save its install), then ``pyinfra ... deploy.py --limit host2``:
  a new host's full deploy, whose service starts on the seed the controller sends (checked: ``seeded.json``).

Each figure is the readiness gate's own ``ready after N s`` (the unit's ExecStartPost: start -> /v1/models lists
the model and one chat completion answered), and vLLM's ``init engine (profile, create kv cache, warmup model)
took N s`` (where the compile happens). Results: a Markdown table on stdout and bench/results/compile_seed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mineru_fleet import sandbox  # noqa: E402
from mineru_fleet.sandbox import quickstart  # noqa: E402

UNIT = "mineru-vllm@0"
RESULTS = REPO / "bench" / "results" / "compile_seed.json"
WIPE = ("systemctl disable --now 'mineru-vllm@*' 2>/dev/null; systemctl stop 'mineru-vllm@*'; "
        "rm -rf /etc/mineru-fleet /etc/systemd/system/mineru-vllm@.service /var/lib/mineru-fleet {release}; "
        "userdel mineru 2>/dev/null; groupdel mineru 2>/dev/null; systemctl daemon-reload; systemctl reset-failed")


def sh(h, cmd: str, timeout: float = 900) -> str:
    return sandbox.ssh(h, cmd, timeout=timeout).stdout


def class_folder(h) -> str:
    env = sh(h, f"cat /etc/mineru-fleet/{UNIT}.env")
    m = re.search(r'^TORCHINDUCTOR_CACHE_DIR="?([^"\n]+)/inductor"?$', env, re.M)
    assert m, "no class folder in the env file: deploy first"
    return m.group(1)


def figures(h, since: int) -> dict:
    log = sh(h, f"journalctl --no-pager -o cat --since @{since}")
    ready = [float(x) for x in re.findall(r"ready after ([0-9.]+)s", log)]
    warm = [float(x) for x in re.findall(r"warmup model\) took ([0-9.]+) seconds", log)]
    assert ready, f"no readiness line since {since}:\n{log[-1500:]}"
    return {"ready_s": ready[-1], "engine_init_s": warm[-1] if warm else None}


def cold(h) -> dict:
    d = class_folder(h)
    since = int(time.time())
    sh(h, f"systemctl stop {UNIT} && find {d} -mindepth 1 ! -name class.json -delete && systemctl reset-failed {UNIT}; "
       f"systemctl start {UNIT} && touch {d}/.complete")
    return figures(h, since)


def warm(h) -> dict:
    since = int(time.time())
    sh(h, f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")  # the unit counts starts (StartLimitBurst)
    return figures(h, since)


def seeded(h, keep_release: bool) -> dict:
    sh(h, WIPE.format(release="" if keep_release else "/opt/mineru-fleet"))
    since = int(time.time())
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pyinfra", str(quickstart.INVENTORY), "deploy.py", "-y", "--limit", h.ip],
                       cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = class_folder(h)
    seed = json.loads(sh(h, f"cat {d}/seeded.json"))  # the seed was used (else the figure is a cold one)
    return {**figures(h, since), "deploy_s": round(wall, 1), "seed_files": seed["files"], "seed_bytes": seed["bytes"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep-release", action="store_true", help="keep host 2's release venv when it is wiped")
    a = ap.parse_args()
    hosts = [h for h in sandbox.running_hosts() if not h.balancer]
    if len(hosts) < 2:
        print("needs two deployed sandbox hosts: uv run mineru-fleet sandbox run --hosts 2 --no-tests", file=sys.stderr)
        return 2
    origin, new = hosts[0], hosts[1]
    assert class_folder(origin).rsplit("/", 1)[1] == class_folder(new).rsplit("/", 1)[1], "the two hosts are of two classes"
    rows: dict[str, list[dict]] = {"cold": [], "warm restart": [], "seeded first start (new host)": []}
    for i in range(a.runs):
        rows["cold"].append(cold(origin))
        rows["warm restart"].append(warm(origin))
        rows["seeded first start (new host)"].append(seeded(new, a.keep_release))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]['ready_s']} s" for k, v in rows.items()), file=sys.stderr, flush=True)
    med = {k: statistics.median(r["ready_s"] for r in v) for k, v in rows.items()}
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
           "keep_release": a.keep_release, "runs": rows, "median_ready_s": med,
           "seeded_over_warm": round(med["seeded first start (new host)"] / med["warm restart"], 2),
           "cold_over_warm": round(med["cold"] / med["warm restart"], 2)}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print("| start -> ready | runs (s) | median (s) | engine init incl. compile (s) | x warm restart |")
    print("|---|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {', '.join(str(r['ready_s']) for r in v)} | {med[k]:.1f} | "
              f"{', '.join(str(r['engine_init_s']) for r in v)} | {med[k] / med['warm restart']:.2f}x |")
    deploys = [r["deploy_s"] for r in rows["seeded first start (new host)"]]
    print(f"\nnew host's whole deploy (wipe -> serving, release {'kept' if a.keep_release else 'installed'}): "
          f"{', '.join(map(str, deploys))} s; seed {rows['seeded first start (new host)'][0]['seed_files']} files, "
          f"{rows['seeded first start (new host)'][0]['seed_bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
