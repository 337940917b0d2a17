"""Deploy MinerU behind vLLM on every host of an inventory.

    pyinfra inventory/production.py deploy.py

Roles run in order; each is one function in roles/. The preflight plans every host before any
host is changed (an error on one host stops the whole run).
"""

from roles.preflight import preflight

plan = preflight()
