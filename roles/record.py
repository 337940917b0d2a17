"""Record role: what this host runs, written once its servers passed the readiness gate.

    <state_dir>/deployments/<id>/record.json            release, model revision, digests of the unit and env files
    <state_dir>/deployments/<id>/mineru-vllm@.service    the unit as deployed
    <state_dir>/deployments/<id>/mineru-vllm@N.env        each server's environment (0600, like the original)
    <state_dir>/deployments/current -> <id>              the last deployment that passed its gate

The id is a digest of the record: a rerun of the same deployment writes nothing. A failed deploy
never reaches this role, so ``current`` always names a deployment that served; ``mineru-fleet
rollout`` reads it before changing a host and ``rollback.py`` puts it back (the release folder and
the model revision are still on the host: nothing is downloaded).
"""

from __future__ import annotations

import io
import json

from pyinfra import host
from pyinfra.api import deploy

from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import RECORDS, UNIT_NAME, deployment_record, render_env_file, render_unit
from roles.batch import Batch


def records_dir(settings: Settings) -> str:
    return f"{settings.state_dir}/{RECORDS}"


@deploy("Record")
def record(plan: Plan, settings: Settings, release: str) -> str:
    """Write this deployment's record and point ``current`` at it; returns the record id."""
    rid, rec = deployment_record(plan, settings, host.name, release)
    top = records_dir(settings)
    here = f"{top}/{rid}"
    b = Batch()  # one command reads all of it; a converged host gets no operation (roles/batch.py)
    b.directory(name="Deployment records folder", path=top, user="root", group="root", mode="700")
    b.directory(name=f"Deployment record {rid}", path=here, user="root", group="root", mode="700")
    b.put(name="Record: the unit", src=io.StringIO(render_unit(plan, settings)), dest=f"{here}/{UNIT_NAME}",
          user="root", group="root", mode="600")
    for sv in plan.servers:
        b.put(name=f"Record: environment of server {sv.name}", src=io.StringIO(render_env_file(sv, host.name)),
              dest=f"{here}/mineru-vllm@{sv.name}.env", user="root", group="root", mode="600")
    b.put(name="Record: what runs", src=io.StringIO(json.dumps(rec, indent=1, sort_keys=True) + "\n"),
          dest=f"{here}/record.json", user="root", group="root", mode="600")
    b.link(name=f"Current deployment -> {rid}", path=f"{top}/current", target=rid)
    b.apply()
    return rid
