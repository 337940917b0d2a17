"""Command line of the sandbox: ``python -m mineru_fleet.sandbox up [N] | status | down | build``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mineru_fleet.sandbox.config import SandboxError, default_config, log
from mineru_fleet.sandbox.fileserver import serve
from mineru_fleet.sandbox.hosts import supervise, down, status, up
from mineru_fleet.sandbox.image import require_root, ensure_host_deps, prepare_base


def _print_status(rows: list[dict]) -> None:
    hosts = [r for r in rows if r["kind"] == "host"]
    if not hosts:
        print("no sandbox hosts")
    for r in hosts:
        print(f"{r['name']:<5} {r['ip']:<16} nspawn={r['nspawn_pid'] or '-':<8} "
              f"state={r['state']:<10} ssh={'ok' if r['ssh_ok'] else 'no':<3} "
              f"files={r['file_server_url']}")
    fs = next(r for r in rows if r["kind"] == "file-server")
    print(f"file-server pid={fs['pid'] or '-'} port={fs['port']} "
          f"http={'ok' if fs['http_ok'] else 'no'} binds={','.join(fs['binds']) or '-'} "
          f"dir={fs['serve_dir']}")


def main(argv: list[str] | None = None) -> int:
    """``up [N]`` | ``status [--json]`` | ``down`` (plus ``build``); returns the exit code."""
    p = argparse.ArgumentParser(prog="mineru-fleet sandbox",
                                description="Throwaway real-systemd Debian 13 test hosts "
                                            "(systemd-nspawn) for mineru-fleet.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pu = sub.add_parser("up", help="boot N hosts mf1..mfN (keeps running ones), --balancer: and the HAProxy host")
    pu.add_argument("n", nargs="?", type=int, default=1)
    pu.add_argument("--balancer", action="store_true",
                    help="also boot the HAProxy host (container 62, inventory group `balancers`)")
    ps = sub.add_parser("status", help="show hosts and the file server")
    ps.add_argument("--json", action="store_true")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("build", help="only build/refresh the cached rootfs and base dir")
    sv = sub.add_parser("supervise")  # internal
    sv.add_argument("--dir", required=True)
    sv.add_argument("--machine", required=True)
    sv.add_argument("--host-ip", required=True)
    se = sub.add_parser("serve")  # internal
    se.add_argument("--dir", required=True)
    se.add_argument("--port", type=int, required=True)
    se.add_argument("--bind", action="append", required=True)
    args = p.parse_args(argv)

    if not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="[sandbox %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        if args.cmd == "supervise":
            return supervise(Path(args.dir), args.machine, args.host_ip)
        if args.cmd == "serve":
            serve(args.dir, args.port, args.bind)
            return 0
        if args.cmd == "up":
            cfg = default_config()
            hosts = up(args.n, cfg, balancer=args.balancer)
            for h in hosts:
                print(f"{h.name} {h.ip} state={h.state} ssh={'ok' if h.ssh_ok else 'FAIL'} "
                      f"files={h.file_server_url}" + (" (balancer)" if h.balancer else ""))
            print(f"inventory: {cfg.inventory}\nssh: ssh -F {cfg.ssh_config} {hosts[0].name}")
        elif args.cmd == "status":
            rows = status()
            print(json.dumps(rows, indent=2)) if args.json else _print_status(rows)
        elif args.cmd == "down":
            down()
        elif args.cmd == "build":
            require_root()
            ensure_host_deps()
            prepare_base(default_config())
        return 0
    except SandboxError as e:
        print(f"sandbox: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
