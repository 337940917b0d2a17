"""Rollback role: put a recorded deployment back on this host (what ``mineru-fleet rollout`` runs for a failed
batch and for ``--rollback``).

    pyinfra INVENTORY rollback.py --limit HOST --data rollback_record=ID

The record (roles/record.py) names the release folder and holds the unit and environment files as they
were; the model revision folder they name is still on the host (the model role never prunes what an
environment file names, and keeps the newest two). Nothing is downloaded: the files go back, ``current``
moves, each server restarts through its readiness gate (the unit's ExecStartPost), and
``deployments/current`` names the record again.
"""

from __future__ import annotations

import json
import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.files import Directory, File
from pyinfra.operations import server

from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import ENV_DIR, UNIT_NAME, paths
from roles.record import records_dir
from roles.runtime import COMPLETE

RECORD_ID = re.compile(r"[0-9a-f]{16}")


class RollbackError(PyinfraError):
    """The recorded deployment cannot be put back; the message names the host, what is missing and the fix."""


class DeploymentRecord(FactBase):
    """The ``record.json`` of a deployment record folder (None when absent or unreadable).

    Example: ``host.get_fact(DeploymentRecord, path="/var/lib/mineru-fleet/deployments/current")``"""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path + '/record.json')} 2>/dev/null || true"

    def process(self, output):
        try:
            rec = json.loads("\n".join(output))
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None


def restore_commands(settings: Settings, record_id: str, rec: dict) -> list[str]:
    """Shell commands that put record ``record_id`` back and restart its servers (every word quoted)."""
    q = shlex.quote
    p = paths(settings)
    here = f"{records_dir(settings)}/{record_id}"
    rel = f"{p['releases']}/{rec['release']}"
    units = [f"mineru-vllm@{name}.service" for name in sorted(rec["servers"])]
    cmds = [f"install -m 644 -o root -g root {q(here + '/' + UNIT_NAME)} {q('/etc/systemd/system/' + UNIT_NAME)}"]
    cmds += [f"install -m 600 -o root -g root {q(f'{here}/mineru-vllm@{n}.env')} {q(f'{ENV_DIR}/mineru-vllm@{n}.env')}"
             for n in sorted(rec["servers"])]
    cmds += [f"ln -sfn {q(rel)} {q(p['current'] + '.rollback')} && mv -T {q(p['current'] + '.rollback')} {q(p['current'])}",
             "systemctl daemon-reload"]
    for u in units:  # restart returns once the unit's readiness gate passed (ExecStartPost)
        cmds += [f"systemctl reset-failed {q(u)} 2>/dev/null || true", f"systemctl restart {q(u)}"]
    top = records_dir(settings)
    cmds.append(f"ln -sfn {q(record_id)} {q(top + '/current.rollback')} && mv -T {q(top + '/current.rollback')} {q(top + '/current')}")
    return cmds


@deploy("Rollback")
def rollback(settings: Settings, record_id: object) -> None:
    """Put back deployment record ``record_id`` (16 hex digits, from ``deployments/current`` before a change)."""
    if not isinstance(record_id, str) or not RECORD_ID.fullmatch(record_id):
        raise RollbackError(f"{host.name}: rollback_record={str(record_id)[:40]!r} is not a record id (16 hex digits: "
                            f"ls {records_dir(settings)} on the host)")
    here = f"{records_dir(settings)}/{record_id}"
    rec = host.get_fact(DeploymentRecord, path=here)
    if not rec or not isinstance(rec.get("servers"), dict) or not isinstance(rec.get("release"), str):
        raise RollbackError(f"{host.name}: no usable deployment record {here}/record.json: nothing to roll back to "
                            "(records are written by deploy.py after a deploy passed its readiness gate)")
    rel = f"{paths(settings)['releases']}/{rec['release']}"
    if not host.get_fact(File, path=f"{rel}/venv/{COMPLETE}"):
        raise RollbackError(f"{host.name}: release {rec['release']} of record {record_id} is no longer complete at {rel}: "
                            "deploy it again instead (pyinfra INVENTORY deploy.py with its settings)")
    if not host.get_fact(Directory, path=str(rec.get("model_dir", ""))):
        raise RollbackError(f"{host.name}: model folder {rec.get('model_dir')} of record {record_id} was removed: "
                            "deploy that revision again instead")
    server.shell(name=f"Put back deployment {record_id} (release {rec['release']}, model {rec.get('model_revision')})",
                 commands=restore_commands(settings, record_id, rec))
