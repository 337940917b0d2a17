"""Service role: the template unit mineru-vllm@.service and one environment file per planned server.

Restarts a server only when its environment file, the unit, the runtime release or the model
changed; reloads systemd only when the unit file changed; stops and disables instances the plan
no longer has. Before a restart or a start the server's failed state and start-limit counter are
reset (``systemctl reset-failed``), so the unit's start limit counts crashes, not deploys, and a
good deploy recovers a server that a crash loop stopped, without a manual ``systemctl reset-failed``.
"""

from __future__ import annotations

import io
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindFiles
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import ENV_DIR, UNIT_NAME, env_file_path, render_env_file, render_unit
from roles.batch import Batch


def instance(name: str) -> str:
    return f"mineru-vllm@{name}.service"


@deploy("Service")
def service(plan: Plan, settings: Settings, restart_triggers: list) -> list:
    """Install and (re)start every planned server; returns the operations that (re)started one."""
    user = settings.service_user
    b = Batch()  # one command reads all of it; a converged host gets no operation (roles/batch.py)
    b.directory(name="Config folder", path=ENV_DIR, user="root", group="root", mode="755")
    for d in (settings.state_dir, f"{settings.state_dir}/cache"):
        b.directory(name=f"Directory {d}", path=d, user="root", group="root", mode="755")
    b.directory(name="Service home", path=f"{settings.state_dir}/home", user=user, group=user, mode="700")
    unit = b.put(
        name=f"Unit {UNIT_NAME}", src=io.StringIO(render_unit(plan, settings)), dest=f"/etc/systemd/system/{UNIT_NAME}",
        user="root", group="root", mode="644",
    )
    b.then(lambda: systemd.daemon_reload(name="systemd daemon-reload (unit changed)", _if=unit.did_change))

    names = [instance(sv.name) for sv in plan.servers]
    status = host.get_fact(SystemdStatus, services=names) or {}
    enabled = host.get_fact(SystemdEnabled, services=names) or {}
    started = []
    for sv in plan.servers:
        b.directory(name=f"Cache of server {sv.name}", path=f"{settings.state_dir}/cache/{sv.name}", user=user, group=user, mode="700")
        env = b.put(
            name=f"Environment of server {sv.name}", src=io.StringIO(render_env_file(sv, host.name)), dest=env_file_path(sv),
            user="root", group="root", mode="600",
        )
        # systemd counts every start against the unit's start limit (StartLimitBurst in StartLimitIntervalSec), a
        # deploy's restarts included: reset-failed resets that counter, so the limit counts crashes only, and a
        # server that failed at its limit (a crash loop) can be started again by the next good deploy
        unit_name = instance(sv.name)
        reset = f"systemctl reset-failed {shlex.quote(unit_name)} 2>/dev/null || true"
        triggers = any_changed(unit, env, *restart_triggers)
        if status.get(unit_name):  # a stopped server is started below, not restarted
            b.then(lambda reset=reset, triggers=triggers, sv=sv: server.shell(
                name=f"Reset server {sv.name}'s start limit (it restarts next)", commands=[reset], _if=triggers))
            started.append(b.then(lambda triggers=triggers, sv=sv, unit_name=unit_name: systemd.service(
                name=f"Restart server {sv.name} (its unit, env, runtime or model changed)", service=unit_name,
                running=None, restarted=True, _if=triggers)))
        else:
            b.then(lambda reset=reset, sv=sv: server.shell(
                name=f"Clear server {sv.name}'s failed state and start limit (not running)", commands=[reset]))
        if not (status.get(unit_name) and enabled.get(unit_name)):  # running and enabled: nothing to do
            started.append(b.then(lambda sv=sv, unit_name=unit_name: systemd.service(
                name=f"Server {sv.name} enabled and running", service=unit_name, running=True, enabled=True)))
    b.apply()

    # instances the plan no longer has
    planned = {env_file_path(sv) for sv in plan.servers}
    for path in host.get_fact(FindFiles, path=ENV_DIR, fname="mineru-vllm@*.env") or []:
        if path in planned:
            continue
        name = path.rsplit("@", 1)[1].removesuffix(".env")
        systemd.service(name=f"Stop server {name} (no longer planned)", service=instance(name), running=False, enabled=False)
        files.file(name=f"Remove environment of server {name}", path=path, present=False)
    return started
