"""Preflight role: gather facts, validate the inventory data and plan the servers of this host.

Changes nothing on the host. Any error (bad variable, missing driver, impossible GPU layout,
full disk) is raised while pyinfra prepares, so no host of the run is touched.

Example (deploy.py)::

    from roles.preflight import preflight
    plan = preflight()
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.exceptions import PyinfraError

from mineru_fleet.core import modelinfo
from mineru_fleet.controller import modelstore
from mineru_fleet.controller.gather import host_paths
from mineru_fleet.core.hostfacts import FactsError, build_host_facts
from mineru_fleet.core.planner import Plan, PlanError, plan
from mineru_fleet.core.render import errors_text, plan_text
from mineru_fleet.core.settings import Settings, SettingsError, inventory_warnings, load_settings
from mineru_fleet.controller.facts import PreflightFiles
from mineru_fleet.controller.locks import LockFileError, release_lock


class PreflightError(PyinfraError):
    """A host cannot be deployed as its inventory asks; the message says why and how to fix it."""


def host_settings() -> Settings:
    """This host's validated inventory data."""
    try:
        return load_settings(host.data.dict(), host.name)
    except SettingsError as e:
        raise PreflightError(f"{host.name}: bad inventory data:\n" + "\n".join(f"  {p}" for p in e.problems)) from None


def model_facts(settings: Settings, folder: Path | None = None, manifest: dict | None = None) -> modelinfo.ModelFacts:
    """Model figures from the controller's copy when there is one, else the built-in profile (with the
    weights' size from the hub's file list when it is known)."""
    if folder is not None and (folder / "config.json").is_file():
        return modelinfo.from_model_dir(folder, settings.model_id)
    return modelinfo.with_manifest_weights(modelinfo.builtin_profile(settings.model_id), manifest)


def resolve_model(settings: Settings) -> modelstore.Prepared:
    """The model on the hub at the pinned revision: its file list (the controller fetches the files
    when the run executes, see roles/model.py; a ``--dry`` run fetches nothing).

    A bad model id or revision, an unreachable hub or a bad token file stops the run here, before
    any host is changed."""
    try:
        return modelstore.prepare(settings)
    except modelstore.ModelStoreError as e:
        raise PreflightError(f"{host.name}: model {settings.model_id}@{settings.model_revision}: {e}") from None


def preflight(show: bool = True) -> Plan:
    """Gather this host's facts and return its plan; raise ``PreflightError`` if it cannot be served."""
    settings = host_settings()
    if show:
        for w in inventory_warnings(host.data.dict()):
            logger.warning(f"{host.name}: warning: {w}")
    prepared = resolve_model(settings)
    files = host.get_fact(PreflightFiles, paths=host_paths(host.data.dict()), user=settings.service_user)
    try:
        facts = build_host_facts(host.name, files or {})
        p = plan(facts, settings, model_facts(settings, prepared.folder, prepared.manifest))
        p.warnings.extend(modelstore.revision_findings(settings, prepared.manifest))
        release_lock(p.profile, settings.runtime_lock)
    except LockFileError as e:
        raise PreflightError(f"{host.name}: {e}") from None
    except FactsError as e:
        raise PreflightError(f"{host.name}: could not read the host's facts: {e}") from None
    except PlanError as e:
        raise PreflightError(errors_text(e)) from None
    if show:
        logger.info(plan_text(p))
    return p
