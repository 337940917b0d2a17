"""The Ansible playbook's per-host variables, built from OUR plan, settings and renderer (pure: data in, data out).

The playbook (``converge.yml``) converges what ``deploy.py`` converges; every value it writes comes from here, so the
two tools converge byte-identical unit and env files, the same paths, modes and model SHA-256s. Example::

    >>> v = host_vars(plan, settings, "192.168.247.6", manifest, sources)  # doctest: +SKIP
    >>> v["mf_unit"]["content"] == render_unit(plan, settings)  # doctest: +SKIP
    True

``sources`` are the controller files pyinfra's runtime role uploads (``uv``, the readiness gate, the GPU check, the lock)
and the model folder the model role sends from (the controller cache), as absolute controller paths.
"""

from __future__ import annotations

from mineru_fleet.controller import modelstore
from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import ENV_DIR, UNIT_NAME, env_file_path, paths, render_env_file, render_unit

COMPLETE = ".mineru-fleet-complete"  # == roles.runtime.COMPLETE (a unit test checks)


def host_vars(plan: Plan, settings: Settings, host_name: str, manifest: dict, sources: dict[str, str],
              release_id: str) -> dict:
    """Variables of one host (all prefixed ``mf_``) for ``converge.yml``."""
    p = paths(settings)
    rel = f"{p['releases']}/{release_id}"
    f = modelstore.folders(settings, plan.model_dir)
    files = sorted(manifest["files"], key=lambda e: e["path"])
    return {
        "mf_user": settings.service_user,
        "mf_root_dirs": [settings.install_dir, p["releases"], p["bin_dir"], rel],
        "mf_service_dirs": [ENV_DIR, settings.state_dir, f"{settings.state_dir}/cache"],
        "mf_home": f"{settings.state_dir}/home",
        "mf_release": {"dir": rel, "marker": f"{rel}/venv/{COMPLETE}", "current": p["current"]},
        "mf_uploads": [
            {"src": sources["uv"], "dest": f"{p['bin_dir']}/uv", "mode": "0755"},
            {"src": sources["ready"], "dest": f"{p['bin_dir']}/mineru-fleet-ready", "mode": "0755"},
            {"src": sources["gpucheck"], "dest": f"{p['bin_dir']}/mineru-fleet-gpucheck", "mode": "0755"},
            {"src": sources["lock"], "dest": f"{rel}/lock.txt", "mode": "0644"},
        ],
        "mf_model": {
            "final": f["final"], "parent": f["parent"], "source": sources["model"],
            "dirs": sorted({f["final"]} | {f"{f['final']}/{e['path'].rsplit('/', 1)[0]}" for e in files if "/" in e["path"]}),
            "files": [{"path": e["path"], "sha256": e["sha256"], "size": e["size"]} for e in files],
        },
        "mf_unit": {"dest": f"/etc/systemd/system/{UNIT_NAME}", "content": render_unit(plan, settings)},
        "mf_servers": [
            {"name": sv.name, "instance": f"mineru-vllm@{sv.name}.service", "port": sv.port,
             "cache": f"{settings.state_dir}/cache/{sv.name}",
             "env_file": env_file_path(sv), "env_content": render_env_file(sv, host_name)}
            for sv in plan.servers
        ],
    }
