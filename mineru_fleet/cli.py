"""``mineru-fleet``: what pyinfra is not — plan, diagnose, rollout, status, drain/enable, sandbox.

    mineru-fleet plan --facts examples/hosts/seed-2x2080ti --data tensor_parallel_size=2
    mineru-fleet plan --host inventory/production.py --save facts/
    mineru-fleet plan --host @local --json
    mineru-fleet plan --facts DIR --calibrate server.log
    mineru-fleet diagnose --journal server.log [--facts DIR --data KEY=VALUE] [--json]
    mineru-fleet diagnose --host inventory/production.py [--unit mineru-vllm@0] [--json]
    mineru-fleet rollout inventory/production.py --data model_revision=v2 --canary 1 --batch 1,25% [--dry-run|--resume|--rollback]
    mineru-fleet status inventory/production.py [--json]
    mineru-fleet drain gpu-3:0 -i inventory/production.py      (then systemctl restart mineru-vllm@0 there)
    mineru-fleet enable gpu-3:0 -i inventory/production.py
    mineru-fleet sandbox up 1 | status | down
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mineru_fleet.core import modelinfo
from mineru_fleet.paths import checkout_problem
from mineru_fleet.controller.factsdir import load_host_facts, write_facts_dir
from mineru_fleet.core.hostfacts import FactsError, build_host_facts
from mineru_fleet.core.planner import PlanError, plan
from mineru_fleet.core.render import errors_text, plan_text
from mineru_fleet.core.settings import SettingsError, inventory_warnings, load_settings, parse_data_args

EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


EXIT_FINDINGS = 1


class BadInput(Exception):
    """Bad command-line input found late (a --model-dir that is no model folder): exit 2 with this message."""


def _model_facts(args, settings, local_source: bool = False):
    if getattr(args, "model_dir", None):
        folder = Path(args.model_dir)
        if not (folder / "config.json").is_file():
            raise BadInput(f"--model-dir {args.model_dir}: not a model folder (no config.json there): give the folder "
                           "holding the model's config.json and safetensors, or leave --model-dir out for the built-in profile")
        try:
            return modelinfo.from_model_dir(folder, settings.model_id)
        except (OSError, ValueError, KeyError) as e:
            raise BadInput(f"--model-dir {args.model_dir}: cannot read the model's files ({type(e).__name__}: {str(e)[:160]})") from None
    src = settings.model_local_source if local_source else None  # diagnose: the model the deploy copied
    if src and (Path(src) / "config.json").is_file():
        return modelinfo.from_model_dir(Path(src), settings.model_id)
    return modelinfo.builtin_profile(settings.model_id)


def _calibrate(p, js: dict, text: str, args) -> tuple[dict, str]:
    """Re-plan with the memory a startup log measured; show predicted vs calibrated vs measured."""
    from dataclasses import asdict

    from mineru_fleet.core import diagnose as dg

    d = args._calibration
    model2, changed = dg.measured_model(d, p.model)
    settings = args._settings
    p2 = plan(args._facts_obj, settings, model2)
    idx = 0
    if d.tensor_parallel_size:
        idx = next((i for i, s in enumerate(p.servers) if s.tensor_parallel_size == d.tensor_parallel_size), 0)
    if not p.servers:
        return js, text
    rows = dg.calibration_rows(d, p.servers[idx], p2.servers[idx])
    js2 = p2.to_json()
    js2["calibration"] = {
        "log": args.calibrate,
        "server": p.servers[idx].name,
        "measured_fields": changed,
        "rows": [asdict(r) for r in rows],
    }
    note = ""
    if d.tensor_parallel_size and d.tensor_parallel_size != p.servers[idx].tensor_parallel_size:
        note = f"  note: the log ran with TP={d.tensor_parallel_size}, this server with TP={p.servers[idx].tensor_parallel_size}\n"
    if d.gpu_memory_utilization and p.servers[idx].cuda_visible_devices and f"{d.gpu_memory_utilization:g}" not in p.servers[idx].args:
        note += f"  note: the log ran with gpu_memory_utilization {d.gpu_memory_utilization}; compare KV cache at equal settings\n"
    title = f"calibration from {args.calibrate} (server mineru-vllm@{p.servers[idx].name}; measured: {', '.join(changed) or 'nothing usable'})"
    return js2, plan_text(p2) + dg.calibration_text(rows, title) + note


def _plan_one(host: str, facts, data: dict, args) -> tuple[dict | None, str, bool]:
    """Plan one host; returns (json, text, ok)."""
    for w in inventory_warnings(data):
        print(f"{host}: warning: {w}", file=sys.stderr)
    try:
        settings = load_settings(data, host)
        p = plan(facts, settings, _model_facts(args, settings))
        if getattr(args, "_calibration", None) is not None:
            args._settings, args._facts_obj = settings, facts
            js, text = _calibrate(p, p.to_json(), plan_text(p), args)
            return js, text, True
    except SettingsError as e:
        msg = f"{host}: bad inventory data:\n" + "\n".join(f"  {x}" for x in e.problems)
        return {"host": host, "errors": [{"code": "settings", "message": x} for x in e.problems]}, msg, False
    except PlanError as e:
        return {"host": host, "errors": [vars(f) for f in e.errors]}, errors_text(e), False
    return p.to_json(), plan_text(p), True


def cmd_plan(args) -> int:
    try:
        data = parse_data_args(args.data or [])
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    hosts: list[tuple[str, object, dict]] = []
    rc = 0
    args._calibration = None
    if getattr(args, "calibrate", None):
        from mineru_fleet.core import diagnose as dg

        try:
            args._calibration = dg.parse_log(Path(args.calibrate).read_bytes())
        except (OSError, dg.LogError) as e:
            print(f"error: --calibrate {args.calibrate}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.facts:
        try:
            facts = load_host_facts(Path(args.facts))
        except (FileNotFoundError, FactsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hosts.append((facts.host, facts, data))
    else:
        from mineru_fleet.controller.gather import GatherError, gather

        try:
            gathered = gather(args.host)
        except GatherError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not gathered:
            print(f"error: {args.host!r} names no host: give an inventory file, a host, or @local", file=sys.stderr)
            return EXIT_BAD_INPUT
        for name, g in gathered.items():
            if g.error:
                print(f"error: {name}: {g.error}", file=sys.stderr)
                rc = EXIT_UNREACHABLE
                continue
            if args.save:
                dest = Path(args.save) if len(gathered) == 1 else Path(args.save) / name
                write_facts_dir(dest, g.files)
                print(f"{name}: facts saved to {dest}", file=sys.stderr)
            try:
                facts = build_host_facts(name, g.files)
            except FactsError as e:
                print(f"error: {name}: {e}", file=sys.stderr)
                rc = EXIT_BAD_INPUT
                continue
            hosts.append((name, facts, {**g.data, **data}))
    results = []
    for name, facts, hdata in hosts:
        js, text, ok = _plan_one(name, facts, hdata, args)
        results.append(js)
        if not args.json:
            print(text, file=sys.stdout if ok else sys.stderr)
        if not ok:
            rc = rc or EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return rc


def dg_journal_line(line: str) -> bool:
    from mineru_fleet.core.diagnose import RE_JOURNAL_ISO

    return bool(RE_JOURNAL_ISO.match(line))


def _diag_server(p, unit: str):
    name = unit.split("@", 1)[1].removesuffix(".service") if "@" in unit else "0"
    return next((s for s in p.servers if s.name == name), None)


def _diagnose_one(label: str, raw: bytes, args, plan_obj=None, plan_note: str | None = None) -> tuple[dict, str, int]:
    """(json, text, exit code) for one log."""
    from mineru_fleet.core import diagnose as dg

    try:
        d = dg.parse_log(raw)
    except dg.LogError as e:
        return {"source": label, "error": str(e)}, f"error: {label}: {e}", EXIT_BAD_INPUT
    server = _diag_server(plan_obj, args.unit) if plan_obj is not None else None
    if server is not None:
        dg.apply_plan(d, server, plan_obj.warnings)
    elif plan_note is None and plan_obj is not None:
        plan_note = f"the plan has no server for {args.unit}"
    if plan_note:
        d.notes.append(f"no plan: {plan_note}")
    elif server is not None:
        d.notes.append(f"compared with the plan of {plan_obj.host} server mineru-vllm@{server.name}")
    js = {"source": label, **d.to_json()}
    text = dg.diagnosis_text(d, label)
    if not d.complete:
        text += f"error: {label}: the log ends before the server was ready and shows no error (truncated, or still starting)\n"
        return js, text, EXIT_BAD_INPUT
    rc = EXIT_FINDINGS if (d.failed or any(f.severity == "error" for f in d.findings)) else 0
    return js, text, rc


def cmd_diagnose(args) -> int:
    try:
        data = parse_data_args(args.data or [])
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results: list[tuple[dict, str, int]] = []
    if args.journal:
        try:
            raw = sys.stdin.buffer.read() if args.journal == "-" else Path(args.journal).read_bytes()
        except OSError as e:
            print(f"error: cannot read {args.journal}: {e.strerror or e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        plan_obj, note = None, None
        if args.facts:
            try:
                facts = load_host_facts(Path(args.facts))
                settings = load_settings(data, facts.host)
                plan_obj = plan(facts, settings, _model_facts(args, settings, local_source=True))
            except (FileNotFoundError, FactsError, SettingsError, PlanError) as e:
                print(f"error: --facts {args.facts}: {e}", file=sys.stderr)
                return EXIT_BAD_INPUT
        results.append(_diagnose_one(args.journal, raw, args, plan_obj, note))
    else:
        from mineru_fleet.controller.gather import GatherError, gather_journals

        if (args.host.endswith(".py") or "/" in args.host) and not Path(args.host).exists():
            print(f"error: inventory {args.host!r} does not exist", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            gathered = gather_journals(args.host, args.unit)
        except GatherError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        for name, g in gathered.items():
            if g.error:
                results.append(({"source": name, "error": g.error}, f"error: {name}: {g.error}", EXIT_UNREACHABLE))
                continue
            label = f"{name} {args.unit}"
            jinfo = g.data.get("_journal") or {}
            jtext = g.files.get("journal", "")
            if not any(dg_journal_line(x) for x in jtext.splitlines()):
                first = jtext.strip().splitlines()[0][:200] if jtext.strip() else "nothing"
                msg = (f"no journal entries for {args.unit} (state {jinfo.get('active') or 'unknown'}; journalctl said: {first}): "
                       "never started, a wrong --unit, or no systemd journal on this host")
                results.append(({"source": label, "error": msg}, f"error: {label}: {msg}", EXIT_BAD_INPUT))
                continue
            plan_obj, note = None, None
            try:
                settings = load_settings({**g.data, **data}, name)
                plan_obj = plan(build_host_facts(name, g.files), settings, _model_facts(args, settings, local_source=True))
            except (FactsError, SettingsError, PlanError, FileNotFoundError) as e:
                note = f"cannot plan {name}: {str(e).splitlines()[0]}"
            js, text, rc = _diagnose_one(label, g.files["journal"].encode(), args, plan_obj, note)
            js["invocation"] = jinfo.get("invocation")
            js["active"] = jinfo.get("active")
            results.append((js, text, rc))
    for js, text, rc in results:
        if not args.json:
            print(text, file=sys.stderr if rc == EXIT_BAD_INPUT and "error" in js else sys.stdout)
        elif rc in (EXIT_BAD_INPUT, EXIT_UNREACHABLE) and "error" in js:
            print(f"error: {js['source']}: {js['error']}", file=sys.stderr)
    if args.json:
        out = [js for js, _, _ in results]
        print(json.dumps(out[0] if len(out) == 1 and args.journal else out, indent=2, default=str))
    codes = [rc for _, _, rc in results]
    for worst in (EXIT_UNREACHABLE, EXIT_BAD_INPUT, EXIT_FINDINGS):
        if worst in codes:
            return worst
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mineru-fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="plan the vLLM servers of a host from its facts")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--facts", metavar="DIR", help="a facts folder (format of examples/hosts/*)")
    src.add_argument("--host", metavar="INVENTORY_OR_HOST", help="gather facts live via pyinfra: an inventory file, host or @local")
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help="an inventory variable (repeatable)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--save", metavar="DIR", help="with --host: write the gathered facts in the fixtures' format")
    p.add_argument("--model-dir", metavar="DIR", help="read model figures from a local model folder (config.json, safetensors)")
    p.add_argument("--calibrate", metavar="LOG", help="a server's startup log: plan with its measured weights, non-torch and "
                   "activation memory, and show predicted vs measured KV cache and concurrency")
    p.set_defaults(func=cmd_plan)
    dg = sub.add_parser("diagnose", help="read a server's startup log: figures, findings and fixes")
    dsrc = dg.add_mutually_exclusive_group(required=True)
    dsrc.add_argument("--journal", metavar="FILE", help="a saved log: journalctl -u UNIT -a -o short-iso output, or vLLM's stdout ('-': stdin)")
    dsrc.add_argument("--host", metavar="INVENTORY_OR_HOST", help="read journalctl -u UNIT since the unit's last start on each host (pyinfra)")
    dg.add_argument("--unit", default="mineru-vllm@0", help="systemd unit (default mineru-vllm@0); also picks the plan's server")
    dg.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    dg.add_argument("--facts", metavar="DIR", help="with --journal: plan this host to say which findings the plan handles")
    dg.add_argument("--data", action="append", metavar="KEY=VALUE", help="an inventory variable for that plan (repeatable)")
    dg.add_argument("--model-dir", metavar="DIR", help="model folder for the plan's figures")
    dg.set_defaults(func=cmd_diagnose)
    ro = sub.add_parser("rollout", help="roll the inventory's deploy over a serving fleet, batch by batch behind the balancer")
    ro.add_argument("inventory", metavar="INVENTORY")
    ro.add_argument("--data", action="append", metavar="KEY=VALUE", help="an inventory variable for this rollout (repeatable)")
    ro.add_argument("--canary", default="1", metavar="N", help="hosts in the first batch, alone (default 1; 0: none)")
    ro.add_argument("--batch", default="1", metavar="SIZES", help="batch sizes like Ansible's serial: 1,25%%,50%% (the last repeats)")
    ro.add_argument("--max-fail", default="0", metavar="N|P%%", help="failed hosts a batch may have and still go on (default 0)")
    ro.add_argument("--drain-timeout", type=float, default=600, metavar="S", help="seconds to wait for a drained server to go idle")
    ro.add_argument("--soak", type=float, default=30, metavar="S", help="seconds a batch serves, watched, before the next one")
    ro.add_argument("--state-file", metavar="FILE", help="where the rollout's state is kept (default under $XDG_STATE_HOME)")
    mode = ro.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the order of the batches and stop")
    mode.add_argument("--resume", action="store_true", help="finish the rollout a killed controller left")
    mode.add_argument("--rollback", action="store_true", help="return every server that rollout touched to its previous deployment")
    ro.set_defaults(func=cmd_rollout)
    st = sub.add_parser("status", help="one row per server: systemd, release, revision, ready, balancer state, load")
    st.add_argument("inventory", metavar="INVENTORY")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=lambda a: _fleetstatus().cmd_status(a.inventory, a.json))
    for name, helptext in (("drain", "take a server out of the balancer and wait until it is idle"),
                           ("enable", "put a drained server back into the balancer and wait until it is UP")):
        d = sub.add_parser(name, help=helptext)
        d.add_argument("server", metavar="HOST[:N]")
        d.add_argument("-i", "--inventory", default="inventory/production.py", help="the fleet's inventory (default inventory/production.py)")
        d.add_argument("--wait", type=float, default=600, metavar="S", help="seconds to wait (default 600)")
        d.set_defaults(func=lambda a, enable=(name == "enable"): _fleetstatus().cmd_drain_enable(a.inventory, a.server, enable, a.wait))
    s = sub.add_parser("sandbox", help="throwaway systemd hosts on this machine (root): run | up [N] | status | down")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=lambda a: _sandbox(a.rest))
    return ap


def _fleetstatus():
    from mineru_fleet.controller import fleetstatus

    return fleetstatus


def cmd_rollout(args) -> int:
    from mineru_fleet.controller import rollouts

    if args.data and (args.resume or args.rollback):
        raise BadInput("--data goes with a new rollout only: --resume deploys the target recorded in the state file, "
                       "--rollback the previous deployments")
    try:
        data = parse_data_args(args.data or [])
        load_settings(data, "--data")
    except SettingsError as e:
        raise BadInput("; ".join(e.problems)) from None
    opts = rollouts.Options(args.inventory, data, canary=args.canary, batch=args.batch, max_fail=args.max_fail,
                            drain_timeout=args.drain_timeout, soak=args.soak,
                            state_file=Path(args.state_file) if args.state_file else None)
    return rollouts.main(opts, resume=args.resume, rollback=args.rollback, dry_run=args.dry_run)


def _sandbox(rest: list[str]) -> int:
    from mineru_fleet.sandbox import quickstart
    from mineru_fleet.sandbox.__main__ import main as sandbox_main

    if rest[:1] == ["run"]:
        return quickstart.main(rest[1:])
    rc = sandbox_main(rest) or 0
    if rest[:1] == ["down"] and rc == 0:
        quickstart.stop_hub()
    return rc


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    problem = checkout_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader went away (`mineru-fleet plan | head`): stop quietly, no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
