"""``mineru-fleet``: what pyinfra is not — plan (and, as they land, sandbox, diagnose, rollout).

    mineru-fleet plan --facts shared/fixtures/hosts/seed-2x2080ti --data tensor_parallel_size=2
    mineru-fleet plan --host inventory/production.py --save facts/
    mineru-fleet plan --host @local --json
    mineru-fleet sandbox up 1 | status | down
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import modelinfo
from .factsdir import load_host_facts, write_facts_dir
from .hostfacts import FactsError, build_host_facts
from .planner import PlanError, plan
from .render import errors_text, plan_json, plan_text
from .settings import SettingsError, load_settings, parse_data_args

EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


def _model_facts(args, settings):
    if args.model_dir:
        return modelinfo.from_model_dir(Path(args.model_dir), settings.model_id)
    return modelinfo.builtin_profile(settings.model_id)


def _plan_one(host: str, facts, data: dict, args) -> tuple[dict | None, str, bool]:
    """Plan one host; returns (json, text, ok)."""
    try:
        settings = load_settings(data, host)
        p = plan(facts, settings, _model_facts(args, settings))
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
    if args.facts:
        try:
            facts = load_host_facts(Path(args.facts))
        except (FileNotFoundError, FactsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hosts.append((facts.host, facts, data))
    else:
        from .gather import GatherError, gather

        try:
            gathered = gather(args.host)
        except GatherError as e:
            print(f"error: {e}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mineru-fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="plan the vLLM servers of a host from its facts")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--facts", metavar="DIR", help="a facts folder (format of shared/fixtures/hosts/*)")
    src.add_argument("--host", metavar="INVENTORY_OR_HOST", help="gather facts live via pyinfra: an inventory file, host or @local")
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help="an inventory variable (repeatable)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--save", metavar="DIR", help="with --host: write the gathered facts in the fixtures' format")
    p.add_argument("--model-dir", metavar="DIR", help="read model figures from a local model folder (config.json, safetensors)")
    p.set_defaults(func=cmd_plan)
    s = sub.add_parser("sandbox", help="throwaway systemd hosts on this machine (root): run | up [N] | status | down")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=lambda a: _sandbox(a.rest))
    return ap


def _sandbox(rest: list[str]) -> int:
    if rest[:1] == ["run"]:
        from . import quickstart

        return quickstart.main(rest[1:])
    from . import sandbox

    return sandbox.main(rest) or 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
