"""Where the project's own files are: the checkout that holds ``deploy.py``, ``templates/`` and ``locks/``.

mineru-fleet is a pyinfra project used from a checkout (``git clone``, then ``uv run ...``): the
deploy, its roles, templates, locks and example inventory are files a user reads and edits, so
they stay at the top of the repository where pyinfra users expect them. Every module finds them
through this one place. ``MINERU_FLEET_REPO`` points at another checkout.

Example::

    from mineru_fleet.paths import REPO, TEMPLATES
    (TEMPLATES / "mineru-vllm@.service.j2").is_file()   # True in a checkout
"""

from __future__ import annotations

import os
from pathlib import Path

#: the checkout: the folder that holds ``deploy.py`` (the package's parent folder)
REPO = Path(os.environ.get("MINERU_FLEET_REPO") or Path(__file__).resolve().parents[1]).resolve()
#: Jinja2 templates of the unit, its environment file and the balancer config
TEMPLATES = REPO / "templates"
#: pinned requirement locks per profile (``cuda.txt``, ``cpu.txt``)
LOCKS = REPO / "locks"
#: example facts folders of real and reconstructed hosts (``mineru-fleet plan --facts``)
EXAMPLE_HOSTS = REPO / "examples" / "hosts"
#: the stand-alone programs copied to hosts
ONHOST = Path(__file__).resolve().parent / "onhost"


def checkout_problem() -> str | None:
    """Why this installation cannot find its checkout (None when it can).

    A wheel installed outside a checkout (``pip install``, ``uv tool install``) carries only the
    ``mineru_fleet`` package: the deploy files live in the repository, so it needs
    ``MINERU_FLEET_REPO`` pointing at a clone.
    """
    missing = [name for name in ("deploy.py", "templates", "locks") if not (REPO / name).exists()]
    if not missing:
        return None
    return (
        f"mineru-fleet is used from a checkout of the project, and {REPO} has no {', '.join(missing)}. "
        "Fix: git clone the project and run `uv run mineru-fleet ...` inside it, or set "
        "MINERU_FLEET_REPO to the clone's folder."
    )
