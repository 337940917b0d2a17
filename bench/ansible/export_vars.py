"""pyinfra deploy file that changes nothing: plans each host exactly as deploy.py's preflight does and writes the
Ansible variables of that host (``hostvars.host_vars``) to ``$MINERU_FLEET_ANSIBLE_VARS/<host>.json``.

    MINERU_FLEET_ANSIBLE_VARS=DIR pyinfra INVENTORY bench/ansible/export_vars.py -y

(bench/ansible_vs_pyinfra.py runs it once before it times anything.)
"""

import json
import os
import sys
from pathlib import Path

from pyinfra import host

from mineru_fleet.controller import modelstore
from mineru_fleet.controller.locks import lock_path
from mineru_fleet.controller.wheelhouse import release_id
from mineru_fleet.paths import ONHOST
from roles.preflight import host_settings, preflight
from roles.runtime import controller_uv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostvars import host_vars  # noqa: E402

plan = preflight(show=False)
settings = host_settings()
manifest = modelstore.prepare(settings).manifest
sources = {"uv": controller_uv(), "ready": str(ONHOST / "ready.py"), "gpucheck": str(ONHOST / "gpucheck.py"),
           "lock": str(lock_path(plan.profile)), "model": str(modelstore.source_folder(settings).resolve())}
out = Path(os.environ["MINERU_FLEET_ANSIBLE_VARS"])
out.mkdir(parents=True, exist_ok=True)
(out / f"{host.name}.json").write_text(json.dumps(host_vars(plan, settings, host.name, manifest, sources,
                                                            release_id(plan.profile)), indent=1) + "\n")
