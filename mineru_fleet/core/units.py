"""Render the systemd unit template and the per-server environment files from a plan (pure).

Example::

    >>> text = render_env_file(plan.servers[0], plan.host)  # doctest: +SKIP
    >>> "VLLM_USE_V1=0" in text  # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jinja2

from mineru_fleet.paths import TEMPLATES
from mineru_fleet.core.planner import Plan, ServerPlan
from mineru_fleet.core.settings import Settings


UNIT_NAME = "mineru-vllm@.service"
ENV_DIR = "/etc/mineru-fleet"
START_TIMEOUT_S = 900  # a cold CPU start compiles for ~45-75 s; a big GPU model loads in minutes


class RenderError(ValueError):
    """A value cannot be written safely into the unit or an env file (preflight refuses it first; this is the second wall)."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_WORD = re.compile(r"[A-Za-z0-9._+@/:=,-]+")


def envquote(value: object) -> str:
    """Quote a value for a systemd EnvironmentFile: double quotes, with ``\\ " $ `` ` `` backslash-escaped
    (what systemd unescapes inside double quotes). Control characters (a newline would start a new
    assignment) cannot be written: RenderError."""
    s = str(value)
    if _CONTROL.search(s):
        raise RenderError(f"environment values cannot contain control characters (newline, tab, ...): {s[:60]!r}")
    for c in ("\\", '"', "$", "`"):
        s = s.replace(c, "\\" + c)
    return '"' + s + '"'


def envkey(key: object) -> str:
    """An EnvironmentFile key as is, or RenderError (``=``, spaces or a newline would write another line)."""
    k = str(key)
    if not _ENV_KEY.fullmatch(k):
        raise RenderError(f"environment variable name {k[:60]!r} is not [A-Za-z_][A-Za-z0-9_]*")
    return k


def unitword(value: object) -> str:
    """A path or name in the unit file: one word of safe characters, ``%`` (a specifier) refused with the rest.

    systemd would expand ``%`` specifiers, split at spaces and read a newline as a new directive;
    ``$`` in Exec lines is variable expansion. None of these can be escaped everywhere we use the
    value (User=, ReadWritePaths=, ExecStart=), so anything outside the set is refused."""
    s = str(value)
    if not _UNIT_WORD.fullmatch(s):
        raise RenderError(f"{s[:60]!r} cannot be written into a unit file: only letters, digits and . _ + @ / : = , - are allowed")
    return s


def comment(value: object) -> str:
    """Text for a ``#`` comment line: control characters (a newline would end the comment) shown as ``?``."""
    return _CONTROL.sub("?", str(value))


def vllm_args(args: list[str]) -> str:
    """MINERU_VLLM_ARGS: the arguments joined so that systemd's ``$MINERU_VLLM_ARGS`` (split at
    whitespace, honouring single and double quotes) and ``shlex.split`` (the readiness gate) both
    give back exactly ``args``, one value per argument. Backslashes and control characters are
    refused: systemd unescapes backslashes inside quotes where a shell does not."""
    for a in args:
        if _CONTROL.search(a) or "\\" in a:
            raise RenderError(f"server argument {a[:60]!r} contains a control character or a backslash")
    return shlex.join(args)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters["envquote"] = envquote
    env.filters["envkey"] = envkey
    env.filters["unitword"] = unitword
    env.filters["vllm_args"] = vllm_args
    env.filters["comment"] = comment
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
        profile=plan.profile, user=settings.service_user, start_timeout=START_TIMEOUT_S,
        ip_address_allow=plan.ip_address_allow, **paths(settings)
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
        if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
            raw = re.sub(r'\\(["\\$`])', r"\1", raw[1:-1])
        out[key.strip()] = raw
    return out


RECORDS = "deployments"  # <state_dir>/deployments/<id>/: one folder per deployment that passed its readiness gate


def deployment_record(plan: Plan, settings: Settings, host: str, release: str) -> tuple[str, dict]:
    """``(id, record)``: what this host runs once the deploy passed its gate, as the record role writes it.

    The id is a digest of the record, so the same deployment always has the same id (a rerun writes
    nothing) and a rollback names exactly what it puts back.

    >>> from mineru_fleet.controller.factsdir import load_host_facts  # doctest: +SKIP
    """
    import hashlib
    import json

    unit = render_unit(plan, settings)
    record = {
        "release": release,
        "model_id": settings.model_id,
        "model_revision": settings.model_revision,
        "model_dir": plan.model_dir,
        "unit_sha256": hashlib.sha256(unit.encode()).hexdigest(),
        "servers": {
            sv.name: {"port": sv.port, "env_sha256": hashlib.sha256(render_env_file(sv, host).encode()).hexdigest()}
            for sv in plan.servers
        },
    }
    rid = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return rid, record
