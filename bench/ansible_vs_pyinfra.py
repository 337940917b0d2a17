"""No-op converge: our deploy (pyinfra) vs an equivalent Ansible playbook, and how our no-op grows with the fleet.

    uv run python bench/ansible_vs_pyinfra.py [--runs 5] [--sizes 1,3] [--pad-mib 2048]     (root)
    uv run python bench/ansible_vs_pyinfra.py --growth [--runs 3] [--growth-sizes 1,3,6]

Compare (default): boots 3 hosts of the sandbox instance (``mineru-fleet sandbox``'s; ``MINERU_FLEET_SANDBOX_PREFIX`` /
``_NET`` / ``_PORT`` move it), deploys them (``pyinfra inventory/sandbox.py deploy.py``: serving, untimed), writes each
host's Ansible variables from OUR plan and renderer (``bench/ansible/export_vars.py``), runs the playbook once untimed
(its changed count shows whether it agrees with what pyinfra converged), then times alternately, for the first 1 and 3
hosts: our second run (``pyinfra inventory/sandbox.py deploy.py -y --limit ...``) and Ansible's
(``ansible-playbook bench/ansible/converge.yml --limit ...``, pipelining and ControlPersist on: bench/ansible/ansible.cfg),
both changing nothing. Then the same with a model of the tiny files plus one ``--pad-mib`` MiB random file, published
on the local hub as a new revision and deployed first (untimed). Results: Markdown tables on stdout,
bench/results/ansible_vs_pyinfra.json.

Growth (``--growth``): hosts 1..6 of the same instance (``sandbox up 6``), the model-only deploy
(``tests/e2e/deploy_model_only.py``: preflight + model roles, no server) into its own state folder, once untimed, then
its no-op rerun timed on the first 1, 3 and 6 hosts, alternating. Results: bench/results/noop_growth.json.
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
from mineru_fleet.sandbox import quickstart  # noqa: E402

ANSIBLE_DIR = REPO / "bench" / "ansible"
GROWTH_STATE = "/var/lib/mineru-fleet-growth"
#: --fresh --wipe: everything deploy.py wrote on a host except the runtime role's (user, /opt/mineru-fleet)
WIPE = ("systemctl disable --now 'mineru-vllm@*.service' mineru-vllm@0.service 2>/dev/null; "
        "rm -rf /etc/systemd/system/mineru-vllm@.service /etc/mineru-fleet /var/lib/mineru-fleet && systemctl daemon-reload && "
        "systemctl reset-failed 'mineru-vllm@*' 2>/dev/null; true")
ENV = {**os.environ, "MODELSCOPE_LOG_LEVEL": "40", "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
       "ANSIBLE_NOCOLOR": "1", "PYTHONUNBUFFERED": "1"}
#: both tools as on a user's machine, with Python's bytecode cache: a shell that sets PYTHONDONTWRITEBYTECODE (the
#: dev machine's does) makes each run of either compile every module it imports again (~1 s for pyinfra + ours)
ENV.pop("PYTHONDONTWRITEBYTECODE", None)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], what: str) -> tuple[float, str]:
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t
    out = r.stdout + r.stderr
    if r.returncode:
        sys.exit(f"{what} failed (rc {r.returncode}):\n{out[-5000:]}")
    return wall, out


def limits(hosts, n: int) -> list[str]:
    return [w for h in hosts[:n] for w in ("--limit", h.ip)]


def pyinfra(deploy_file: str, hosts, n: int, data: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "pyinfra", str(quickstart.INVENTORY), deploy_file, "-y", *limits(hosts, n)]
    for d in data:
        cmd += ["--data", d]
    return run(cmd, f"pyinfra {deploy_file} on {n} host(s)")


def ansible(inv: Path, hosts, n: int) -> tuple[float, str]:
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), str(ANSIBLE_DIR / "converge.yml"),
           "--limit", ",".join(h.ip for h in hosts[:n])]
    return run(cmd, f"ansible-playbook on {n} host(s)")


def pyinfra_changed(out: str) -> int:
    """The 'Grand total' row of pyinfra's results table: operations changed (0 for '-')."""
    m = re.search(r"Grand total\s+(\d+)\s+(\S+)", out)
    return 0 if not m or m.group(2) == "-" else int(m.group(2))


def ansible_changed(out: str) -> int:
    """Sum of changed= over the PLAY RECAP lines."""
    return sum(int(x) for x in re.findall(r"\bchanged=(\d+)", out))


def ansible_changed_tasks(out: str) -> list[str]:
    """Names of the tasks that reported ``changed:`` for some host or item."""
    tasks, task = [], None
    for line in out.splitlines():
        m = re.match(r"TASK \[(.+?)\]", line)
        if m:
            task = m.group(1)
        elif line.startswith("changed:") and task and task not in tasks:
            tasks.append(task)
    return tasks


def ansible_inventory(path: Path, vars_dir: Path, hosts, cfg: sandbox.SandboxConfig) -> Path:
    """YAML/JSON inventory: each host's connection plus the variables export_vars.py wrote from our plan."""
    hv = {}
    for h in hosts:
        v = json.loads((vars_dir / f"{h.ip}.json").read_text())
        hv[h.ip] = {"ansible_host": h.ip, "ansible_user": "root", "ansible_ssh_private_key_file": str(cfg.key), **v}
    path.write_text(json.dumps({"all": {"hosts": hv}}, indent=1))
    return path


def publish_padded(pad_mib: int) -> str:
    """The hub's model plus one random file of pad_mib MiB, as a new revision of the same model id."""
    rev = f"{quickstart.HUB_REVISION}-pad{pad_mib}"
    root = quickstart.HUB_HOME / "root"
    dest = Path(root, *quickstart.HUB_MODEL_ID.split("/"), rev)
    if (dest / "padding.bin").is_file() and (dest / "padding.bin").stat().st_size == pad_mib << 20:
        return rev
    from mineru_fleet.sandbox import modelhub

    modelhub.publish(root, quickstart.HUB_MODEL_ID, rev, quickstart.MODEL_DIR)
    with open(dest / "padding.bin", "wb") as f:
        for _ in range(pad_mib):
            f.write(os.urandom(1 << 20))
    (dest.parent / ".index").unlink(missing_ok=True)
    return rev


def med(xs) -> float:
    return round(statistics.median(xs), 2)


def compare(a, cfg: sandbox.SandboxConfig, work: Path) -> dict:
    sizes = [int(n) for n in a.sizes.split(",")]
    hosts = quickstart.prepare(max(sizes))[: max(sizes)]
    models = []
    if "tiny" in a.models.split(","):
        models.append(("tiny", []))
    if "padded" in a.models.split(",") and a.pad_mib:
        models.append((f"+{a.pad_mib} MiB", [f"mineru_model_revision={publish_padded(a.pad_mib)}"]))
    result = {"hosts": [h.ip for h in hosts], "runs": a.runs, "models": []}
    for label, data in models:
        log(f"model {label}: converge {len(hosts)} host(s) with deploy.py (untimed)")
        wall, out = pyinfra("deploy.py", hosts, len(hosts), data)
        log(f"  deploy: {wall:.1f} s, {pyinfra_changed(out)} changed")
        vars_dir = work / f"vars-{len(result['models'])}"
        ENV["MINERU_FLEET_ANSIBLE_VARS"] = str(vars_dir)
        pyinfra(str(ANSIBLE_DIR / "export_vars.py"), hosts, len(hosts), data)
        inv = ansible_inventory(work / f"ansible-{len(result['models'])}.json", vars_dir, hosts, cfg)
        wall, out = ansible(inv, hosts, len(hosts))
        first = {"wall_s": round(wall, 2), "changed": ansible_changed(out)}
        log(f"  ansible first run after pyinfra's deploy: {first}")
        if first["changed"]:
            log("  ansible changed something pyinfra had converged:\n" + out[-3000:])
        model_bytes = sum(e["size"] for e in json.loads((vars_dir / f"{hosts[0].ip}.json").read_text())["mf_model"]["files"])
        rows = []
        for n in sizes:
            for i in range(a.runs):
                for tool in ("pyinfra", "ansible"):
                    wall, out = pyinfra("deploy.py", hosts, n, data) if tool == "pyinfra" else ansible(inv, hosts, n)
                    ch = pyinfra_changed(out) if tool == "pyinfra" else ansible_changed(out)
                    rows.append({"tool": tool, "hosts": n, "run": i + 1, "wall_s": round(wall, 2), "changed": ch})
                    log(f"  {rows[-1]}")
        result["models"].append({"model": label, "model_bytes": model_bytes, "data": data, "ansible_first_run": first,
                                 "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(), "runs": rows})
        save(a, result)  # after each model: a later failure keeps what was measured
    return result


def growth(a, cfg: sandbox.SandboxConfig) -> dict:
    sizes = [int(n) for n in a.growth_sizes.split(",")]
    hosts = quickstart.prepare(max(sizes))[: max(sizes)]
    # its own state folder and an account name no host has (preflight refuses an existing account whose home is elsewhere)
    data = [f"mineru_state_dir={GROWTH_STATE}", "mineru_service_user=mfgrowth"]
    log(f"model-only deploy of {len(hosts)} host(s) into {GROWTH_STATE} (untimed)")
    wall, out = pyinfra("tests/e2e/deploy_model_only.py", hosts, len(hosts), data)
    log(f"  {wall:.1f} s, {pyinfra_changed(out)} changed")
    rows = []
    for i in range(a.runs):
        for n in sizes:
            wall, out = pyinfra("tests/e2e/deploy_model_only.py", hosts, n, data)
            rows.append({"hosts": n, "run": i + 1, "wall_s": round(wall, 2), "changed": pyinfra_changed(out)})
            log(f"  {rows[-1]}")
    return {"deploy": "tests/e2e/deploy_model_only.py", "state_dir": GROWTH_STATE, "hosts": [h.ip for h in hosts], "runs": rows}


def fresh(a, cfg: sandbox.SandboxConfig, work: Path) -> dict:
    """Host number --fresh (booted if needed, never deployed): our runtime role installs the release venv, then the
    playbook alone converges the rest (model, unit, env, server, readiness); then our deploy.py and the playbook again."""
    hosts = quickstart.prepare(a.fresh)
    h = [x for x in hosts if x.index == a.fresh]
    res = {"host": h[0].ip, "wiped": a.wipe}
    if a.wipe:  # a deployed host back to what the runtime role alone leaves (the 7 GB venv kept: disk and time)
        sandbox.ssh(h[0], WIPE, config=cfg)
    wall, out = pyinfra(str(ANSIBLE_DIR / "deploy_runtime_only.py"), h, 1, [])
    res["runtime_only_deploy"] = {"wall_s": round(wall, 1), "changed": pyinfra_changed(out)}
    log(f"runtime role only: {res['runtime_only_deploy']}")
    ENV["MINERU_FLEET_ANSIBLE_VARS"] = str(work / "vars-fresh")
    pyinfra(str(ANSIBLE_DIR / "export_vars.py"), h, 1, [])
    inv = ansible_inventory(work / "ansible-fresh.json", work / "vars-fresh", h, cfg)
    for step in ("ansible_converge", "ansible_again"):
        wall, out = ansible(inv, h, 1)
        res[step] = {"wall_s": round(wall, 1), "changed": ansible_changed(out), "changed_tasks": ansible_changed_tasks(out)}
        res[step]["recap"] = [ln for ln in out.splitlines() if "changed=" in ln]
        log(f"{step}: {res[step]['wall_s']} s, {res[step]['changed']} changed")
    probe = sandbox.ssh(h[0], "systemctl is-active mineru-vllm@0.service; systemctl is-enabled mineru-vllm@0.service; "
                        "curl -s http://127.0.0.1:30000/v1/models | head -c 200", config=cfg, check=False)
    res["serving"] = probe.stdout
    wall, out = pyinfra("deploy.py", h, 1, [])
    res["pyinfra_after"] = {"wall_s": round(wall, 1), "changed": pyinfra_changed(out),
                            "changed_ops": re.findall(r"--> Starting operation: (.+?)\s*\n(?:\s+\[[^]]+\]\s+Success)", out)}
    log(f"our deploy.py after the playbook: {res['pyinfra_after']}")
    return res


def out_path(a) -> Path:
    default = "noop_growth.json" if a.growth else "ansible_fresh.json" if a.fresh else "ansible_vs_pyinfra.json"
    return REPO / "bench" / "results" / (a.out or default)


def save(a, res: dict) -> dict:
    """Write the results; comparison results keep the other models' entries of an earlier run (--models picks some)."""
    out = out_path(a)
    out.parent.mkdir(exist_ok=True)
    res = {**res, "machine": f"{os.cpu_count()} cores (shared)"}
    if not a.growth and not a.fresh and out.is_file():
        old = json.loads(out.read_text())
        mine = {m["model"] for m in res["models"]}
        res["models"] = [m for m in old.get("models", []) if m["model"] not in mine] + res["models"]
        res["models"].sort(key=lambda m: m["model_bytes"])
    out.write_text(json.dumps(res, indent=1) + "\n")
    return res


def print_compare(res: dict) -> None:
    for m in res["models"]:
        print(f"\nmodel {m['model']} ({m['model_bytes']:,} bytes); Ansible's first run after our deploy changed "
              f"{m['ansible_first_run']['changed']}\n")
        print("| hosts | ours (pyinfra), each run | median | Ansible, each run | median | ours / Ansible | changed (ours, Ansible) |")
        print("|---|---|---|---|---|---|---|")
        for n in sorted({r["hosts"] for r in m["runs"]}):
            p = [r for r in m["runs"] if r["hosts"] == n and r["tool"] == "pyinfra"]
            q = [r for r in m["runs"] if r["hosts"] == n and r["tool"] == "ansible"]
            mp, mq = med([r["wall_s"] for r in p]), med([r["wall_s"] for r in q])
            print(f"| {n} | {', '.join(str(r['wall_s']) for r in p)} | **{mp} s** | {', '.join(str(r['wall_s']) for r in q)} | "
                  f"**{mq} s** | **{mp / mq:.2f}x** | {max(r['changed'] for r in p)}, {max(r['changed'] for r in q)} |")


def print_growth(res: dict) -> None:
    print("\n| hosts | no-op model-only deploy, each run | median | x the 3-host median |")
    print("|---|---|---|---|")
    meds = {n: med([r["wall_s"] for r in res["runs"] if r["hosts"] == n]) for n in sorted({r["hosts"] for r in res["runs"]})}
    for n, m in meds.items():
        walls = [r["wall_s"] for r in res["runs"] if r["hosts"] == n]
        ratio = f"{m / meds[3]:.2f}x" if 3 in meds else "-"
        print(f"| {n} | {', '.join(map(str, walls))} | **{m} s** | {ratio} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1,3", help="fleet sizes compared (comma-separated)")
    ap.add_argument("--pad-mib", type=int, default=2048, help="the large model's random file; 0: the tiny model only")
    ap.add_argument("--models", default="tiny,padded", help="comma-separated: tiny (the sandbox model), padded "
                    "(+ --pad-mib MiB)")
    ap.add_argument("--growth", action="store_true", help="time our no-op at --growth-sizes instead of comparing")
    ap.add_argument("--growth-sizes", default="1,3,6")
    ap.add_argument("--fresh", type=int, default=0, metavar="N", help="converge host number N (never deployed) with the "
                    "playbook after our runtime role alone, then run deploy.py and the playbook again")
    ap.add_argument("--wipe", action="store_true", help="with --fresh: first remove what deploy.py wrote on that host "
                    "except the runtime role's user and release (no venv rebuilt)")
    ap.add_argument("--out", default=None, help="file name under bench/results/")
    a = ap.parse_args()
    cfg = sandbox.default_config()
    work = Path(tempfile.mkdtemp(prefix="bench-ansible-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        res = growth(a, cfg) if a.growth else fresh(a, cfg, work) if a.fresh else compare(a, cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.update(date=started, load_average_at_end=os.getloadavg())
    res = save(a, res)
    if a.fresh:
        print(json.dumps(res, indent=1))
    else:
        (print_growth if a.growth else print_compare)(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
