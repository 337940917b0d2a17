"""Put back a deployment recorded on a host (``mineru-fleet rollout`` runs this for a failed batch and for
``--rollback``; an operator can run it by hand with an id from ``<state_dir>/deployments/`` on the host).

    pyinfra INVENTORY rollback.py --limit HOST --data rollback_record=ID
"""

from pyinfra import host

from roles.preflight import host_settings
from roles.rollback import rollback

rollback(host_settings(), host.data.get("rollback_record"))
