"""Deploy MinerU behind vLLM on every host of an inventory.

    pyinfra inventory/production.py deploy.py

Roles run in order; each is one function in roles/. The preflight plans every host before any
host is changed (an error on one host stops the whole run).
"""

from roles.model import model
from roles.preflight import host_settings, preflight
from roles.record import record
from roles.runtime import release_of, runtime
from roles.service import service
from roles.verify import verify

plan = preflight()
settings = host_settings()
runtime_changes = runtime(plan, settings)
model_changes = model(plan, settings)
started = service(plan, settings, restart_triggers=runtime_changes + model_changes)
verify(plan, settings, started)
record(plan, settings, release_of(plan, settings))
