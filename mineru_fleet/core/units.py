"""Render the systemd unit template and the per-server environment files from a plan (pure).

Example::

    >>> text = render_env_file(plan.servers[0], plan.host)  # doctest: +SKIP
    >>> "VLLM_USE_V1=0" in text  # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from mineru_fleet.paths import TEMPLATES
from mineru_fleet.core.planner import Plan, ServerPlan
from mineru_fleet.core.settings import Settings


UNIT_NAME = "mineru-vllm@.service"
ENV_DIR = "/etc/mineru-fleet"
START_TIMEOUT_S = 900  # a cold CPU start compiles for ~45-75 s; a big GPU model loads in minutes


def envquote(value: object) -> str:
    """Quote a value for a systemd EnvironmentFile (double quotes, backslash escapes)."""
    s = str(value)
    if "\n" in s:
        raise ValueError(f"environment values cannot contain newlines: {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters["envquote"] = envquote
    return env


def paths(settings: Settings) -> dict[str, str]:
    """Where things live on a host."""
    return {
        "current": f"{settings.install_dir}/current",
        "releases": f"{settings.install_dir}/releases",
        "bin_dir": f"{settings.install_dir}/bin",
        "state_dir": settings.state_dir,
        "env_dir": ENV_DIR,
    }


def render_unit(plan: Plan, settings: Settings) -> str:
    return _env().get_template(f"{UNIT_NAME}.j2").render(
        profile=plan.profile, user=settings.service_user, start_timeout=START_TIMEOUT_S, **paths(settings)
    )


def render_env_file(server: ServerPlan, host: str) -> str:
    return _env().get_template("mineru-vllm.env.j2").render(name=server.name, host=host, env=server.env, args=server.args)


def env_file_path(server: ServerPlan) -> str:
    return f"{ENV_DIR}/mineru-vllm@{server.name}.env"


def parse_env_file(text: str) -> dict[str, str]:
    """Read back an EnvironmentFile the way systemd does for our quoting (for tests and diagnose)."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition("=")
        if raw.startswith('"') and raw.endswith('"'):
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key.strip()] = raw
    return out
