"""Session set-up for the end-to-end suite: sandbox hosts up, tiny model, wheelhouse, one deploy.

Hosts come from the pyinfra inventory that `sandbox up` writes (inventory/sandbox.py); each test
reaches them with testinfra over SSH (connection reuse through the sandbox's ssh_config).
"""

from __future__ import annotations

import json
import os

import pytest
import testinfra

from mineru_fleet.sandbox import modelhub
from mineru_fleet.core import modelinfo
from mineru_fleet.sandbox import quickstart
from mineru_fleet import sandbox
from mineru_fleet.controller import modelstore, seedstore
from mineru_fleet.controller.gather import gather
from mineru_fleet.core.hostfacts import build_host_facts
from mineru_fleet.core.planner import plan
from mineru_fleet.core.settings import load_settings

#: serving hosts of the session (3: the rollout scenarios need a canary and a batch after it), plus one balancer host
N_HOSTS = int(os.environ.get("MINERU_FLEET_E2E_HOSTS", "3"))


@pytest.fixture(scope="session")
def hosts() -> list[sandbox.SandboxHost]:
    """The serving sandbox hosts with the deploy applied, behind the sandbox balancer host (group ``balancers``),
    shared by every module (idempotent: a deployed host is left as it is)."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end suite needs root (systemd-nspawn sandbox hosts)")
    started_here = not sandbox.running_hosts()
    try:
        hs = [h for h in quickstart.prepare(N_HOSTS, balancer=True) if not h.balancer]  # the balancer serves nothing
        r = quickstart.deploy()
        assert r.returncode == 0, "pyinfra inventory/sandbox.py deploy.py failed (see its output above)"
        yield hs
    finally:
        if started_here and not os.environ.get("MINERU_FLEET_KEEP_SANDBOX"):
            sandbox.down()
            modelhub.stop_running(quickstart.HUB_HOME)


@pytest.fixture(scope="session")
def plans(hosts, ti):
    """The plan of each host (by IP), from facts gathered live, as the deploy computed it (with each server's
    compile class, from the host's hardware as its compile cache tool reads it)."""
    out = {}
    serving = {h.ip for h in hosts}
    for name, g in gather(str(quickstart.INVENTORY)).items():
        if name not in serving:
            continue
        assert g.error is None, g.error
        s = load_settings(g.data, name)
        model = modelinfo.from_model_dir(quickstart.MODEL_DIR, s.model_id)
        hardware = json.loads(ti[name].check_output("python3 /opt/mineru-fleet/bin/mineru-fleet-compilecache hardware"))
        out[name] = seedstore.with_classes(plan(build_host_facts(name, g.files), s, model), s, hardware,
                                           modelstore.prepare(s).manifest)
    return out


@pytest.fixture(scope="session")
def ti(hosts):
    """testinfra host per IP."""
    cfg = sandbox.default_config()
    return {h.ip: testinfra.get_host(f"ssh://root@{h.ip}", ssh_config=str(cfg.run / "ssh_config")) for h in hosts}
