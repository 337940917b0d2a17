"""Deploy MinerU behind vLLM on every host of an inventory, and HAProxy on the group `balancers`.

    pyinfra inventory/production.py deploy.py

Roles run in order; each is one function in roles/ (the compile cache has two stages around the service). The preflight plans every host before any
host is changed (an error on one host stops the whole run). A host only in the group `balancers`
gets the balancer role only (no GPU checks, runtime, model or service); a host in `balancers` and
another group gets both.
"""

from roles import compilecache
from roles.balancer import balancer
from roles.model import model
from roles.preflight import host_roles, host_settings, preflight
from roles.record import record
from roles.runtime import release_of, runtime
from roles.service import service
from roles.verify import verify

serves, balances = host_roles()
if serves:
    plan = preflight()
    settings = host_settings()
    runtime_changes = runtime(plan, settings)
    model_changes = model(plan, settings)
    compilecache.seed(plan, settings)  # before a server starts: its class folder, from a seed of its class if there is one
    started = service(plan, settings, restart_triggers=runtime_changes + model_changes)
    verify(plan, settings, started)
    record(plan, settings, release_of(plan, settings))
    compilecache.harvest(plan, settings)  # after the gate: the first host of a class gives the controller its caches
if balances:
    balancer()
