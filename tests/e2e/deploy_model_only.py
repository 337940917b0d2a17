"""A deploy with only the preflight and model roles (no 7 GB runtime): the model prefetch tests and bench.

    pyinfra INVENTORY tests/e2e/deploy_model_only.py -y

Host data ``sandbox_modelscope_venv: True`` first gives the host a small venv with modelscope 1.30.0
(from the sandbox wheelhouse) at /opt/mineru-fleet/modelscope-venv, for ``model_fetch_mode: host``
(set ``model_fetch_python`` to its python).
"""

from pyinfra import host
from pyinfra.operations import files, server

from roles.model import model
from roles.preflight import host_settings, preflight
from roles.runtime import controller_uv

plan = preflight(show=False)
settings = host_settings()
if host.data.get("sandbox_modelscope_venv"):
    venv = "/opt/mineru-fleet/modelscope-venv"
    files.directory(name="Tools folder", path="/opt/mineru-fleet/bin", mode="755")
    files.put(name="uv binary", src=controller_uv(), dest="/opt/mineru-fleet/bin/uv", mode="755")
    server.shell(
        name="modelscope venv (host-mode tests)",
        commands=[f"[ -x {venv}/bin/python ] && {venv}/bin/python -c 'import modelscope' || "
                  f"(UV_NO_CACHE=1 /opt/mineru-fleet/bin/uv venv --quiet --python /usr/bin/python3 {venv} && "
                  f"UV_NO_CACHE=1 /opt/mineru-fleet/bin/uv pip install --quiet --python {venv}/bin/python --no-index "
                  f"--find-links {settings.wheel_find_links} modelscope==1.30.0)"],
    )
model(plan, settings)
