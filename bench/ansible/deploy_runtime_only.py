"""The preflight and runtime roles only (the service user and the release venv, no model, no unit, no server): what a
fresh host needs before bench/ansible/converge.yml can converge it, since the playbook asserts the release's completion
marker instead of building a 7 GB venv.

    pyinfra INVENTORY bench/ansible/deploy_runtime_only.py -y
"""

from roles.preflight import host_settings, preflight
from roles.runtime import runtime

plan = preflight(show=False)
runtime(plan, host_settings())
