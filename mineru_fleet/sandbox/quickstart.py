"""The README's main command: a local sandbox host serving a tiny model, deployed and verified.

    uv run mineru-fleet sandbox run [--hosts N]

1. boots N real-systemd sandbox hosts (``mineru_fleet.sandbox``),
2. generates the tiny random Qwen2-VL model (``mineru_fleet.sandbox.tinymodel``),
3. downloads the CPU wheelhouse once and serves it to the air-gapped hosts (``mineru_fleet.controller.wheelhouse``),
4. runs ``pyinfra inventory/sandbox.py deploy.py``,
5. runs the testinfra suite (``tests/e2e/test_deploy.py``) against the hosts,
6. prints where each server is and how to reach it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from mineru_fleet.paths import REPO
from mineru_fleet.sandbox import modelhub
from mineru_fleet import sandbox
from mineru_fleet.sandbox import tinymodel
from mineru_fleet.controller import wheelhouse

MODEL_DIR = REPO / ".sandbox" / "models" / "tiny-qwen2vl"  # what the local hub publishes
HUB_HOME = REPO / ".sandbox" / "hub"        # the local ModelScope-compatible hub (mineru_fleet/sandbox/modelhub.py)
HUB_PORT_OFFSET = 10000  # hub port = the sandbox instance's file server port + 10000 (18780 by default)
# == inventory/group_data/sandbox.py: mineru_model_id, mineru_model_revision, mineru_modelscope_domain, mineru_modelscope_ca_bundle
HUB_MODEL_ID = "mineru-fleet/tiny-qwen2vl"
HUB_REVISION = "v1.0.0-seed0"
INVENTORY = REPO / "inventory" / "sandbox.py"


def log(msg: str) -> None:
    print(f"[sandbox run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prepare(n_hosts: int = 1, balancer: bool = False) -> list[sandbox.SandboxHost]:
    """Hosts up, model made, wheelhouse ready; idempotent and fast on a rerun. ``balancer``: one more
    host, in the inventory group ``balancers`` (the deploy gives it HAProxy in front of the others)."""
    t = time.monotonic()
    hosts = sandbox.up(n_hosts, balancer=balancer)
    log(f"{len(hosts)} sandbox host(s) up in {time.monotonic() - t:.1f}s")
    if not (MODEL_DIR / "config.json").is_file():
        tinymodel.make_tiny_qwen2vl(MODEL_DIR)
        log(f"tiny model written to {MODEL_DIR}")
    start_hub(hosts)
    t = time.monotonic()
    report = wheelhouse.ensure_wheelhouse("cpu")
    log(f"wheelhouse: {report.summary()} ({time.monotonic() - t:.1f}s)")
    return hosts


def hub_port() -> int:
    return sandbox.default_config().port + HUB_PORT_OFFSET


def start_hub(hosts: list[sandbox.SandboxHost]) -> dict:
    """The local hub on 127.0.0.1 and every host's controller IP, with the tiny model at HUB_REVISION."""
    rev = HUB_HOME / "root" / HUB_MODEL_ID / HUB_REVISION
    if not (rev / "config.json").is_file():
        modelhub.publish(HUB_HOME / "root", HUB_MODEL_ID, HUB_REVISION, MODEL_DIR)
    meta = modelhub.ensure_running(HUB_HOME, [h.controller_ip for h in hosts], hub_port())
    log(f"model hub: https://127.0.0.1:{meta['port']} (pid {meta['pid']}) serves {HUB_MODEL_ID}@{HUB_REVISION}")
    return meta


def stop_hub() -> None:
    """Stop the model hub ``run`` started (``mineru-fleet sandbox down`` does, after the hosts)."""
    modelhub.stop_running(HUB_HOME)


def deploy(*extra: str, inventory: Path = INVENTORY) -> subprocess.CompletedProcess:
    """``pyinfra INVENTORY deploy.py -y`` from the repo root; output streams to stderr."""
    cmd = [sys.executable, "-m", "pyinfra", str(inventory), "deploy.py", "-y", *extra]
    return subprocess.run(cmd, cwd=REPO, stdout=sys.stderr, stderr=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mineru-fleet sandbox run", description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1, help="number of sandbox hosts (default 1)")
    ap.add_argument("--no-tests", action="store_true", help="skip the testinfra suite")
    ap.add_argument("--balancer", action="store_true", help="one more host: HAProxy in front of the servers")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        hosts = prepare(a.hosts, balancer=a.balancer)
    except (sandbox.SandboxError, wheelhouse.WheelhouseError) as e:
        log(f"error: {e}")
        return 2
    t = time.monotonic()
    r = deploy()
    log(f"deploy rc={r.returncode} in {time.monotonic() - t:.1f}s")
    if r.returncode:
        return r.returncode
    if not a.no_tests:
        # the operator's checks; the test that reconfigures a host is left to the test suite
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/e2e/test_deploy.py", "-k", "not changing_one_variable"],
                           cwd=REPO, env={**os.environ, "MINERU_FLEET_E2E_HOSTS": str(a.hosts), "MINERU_FLEET_KEEP_SANDBOX": "1"})
        if r.returncode:
            return r.returncode
    balancers = [h for h in hosts if h.balancer]
    hosts = [h for h in hosts if not h.balancer]
    print(f"\nmineru-fleet sandbox: {len(hosts)} host(s) serving MinerU through vLLM 0.10.2 (CPU) in {time.monotonic() - t0:.0f}s")
    for h in balancers:
        print(f"  {h.name}: http://{h.ip}:8000/v1/models   (HAProxy in front of them; ssh -F {sandbox.default_config().run}/ssh_config"
              f" {h.name}; systemctl status haproxy)")
    for h in hosts:
        print(f"  {h.name}: http://{h.ip}:30000/v1/models   (ssh -F {sandbox.default_config().run}/ssh_config {h.name};"
              f" systemctl status mineru-vllm@0)")
    print(f"  parse a PDF: uv run python -m mineru_fleet.sandbox.client http://{hosts[0].ip}:30000 [FILE.pdf]   (mineru -b vlm-http-client)")
    print("  stop the hosts: uv run mineru-fleet sandbox down")
    return 0
