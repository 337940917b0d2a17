"""Preflight role: gather facts, validate the inventory data and plan the servers of this host.

Changes nothing on the host. Any error (bad variable, missing driver, impossible GPU layout,
full disk) is raised while pyinfra prepares, so no host of the run is touched.

Example (deploy.py)::

    from roles.preflight import preflight
    plan = preflight()
"""

from __future__ import annotations

import threading
from pathlib import Path

from pyinfra import host, inventory, logger
from pyinfra.api import Host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.hardware import Ipv4Addrs, Ipv6Addrs

from mineru_fleet.core import haproxy, modelinfo
from mineru_fleet.controller import modelstore, seedstore
from mineru_fleet.controller.gather import host_paths
from mineru_fleet.core.hostfacts import FactsError, build_host_facts
from mineru_fleet.core.planner import Plan, PlanError, plan
from mineru_fleet.core.render import errors_text, plan_text
from mineru_fleet.core.settings import Settings, SettingsError, inventory_warnings, load_settings
from mineru_fleet.controller.facts import CompileHardware, PreflightFiles
from mineru_fleet.controller.locks import LockFileError


class PreflightError(PyinfraError):
    """A host cannot be deployed as its inventory asks; the message says why and how to fix it."""


def host_settings(h: Host | None = None) -> Settings:
    """The validated inventory data of ``h`` (default: this host)."""
    h = host if h is None else h
    try:
        return load_settings(h.data.dict(), h.name)
    except SettingsError as e:
        raise PreflightError(f"{h.name}: bad inventory data:\n" + "\n".join(f"  {p}" for p in e.problems)) from None


def universal_groups() -> set[str]:
    """Groups that hold every host of the inventory (pyinfra's group named after the inventory file):
    they say nothing about what a host does."""
    n = len(list(inventory))
    return {g for g in inventory.groups if len(inventory.get_group(g, [])) == n}


def host_roles(h: Host | None = None) -> tuple[bool, bool]:
    """``(serves, balances)`` of ``h`` (default: this host), from its inventory groups (``haproxy.roles_of``)."""
    return haproxy.roles_of((host if h is None else h).groups, universal_groups())


#: every serving host's preflight asks for the balancers' facts while pyinfra prepares the hosts at once (gevent
#: greenlets): without this lock each one opened its own connection to the same balancer host, and with 6 hosts the
#: prepare hung for good (paramiko: "unhandled type 3"). The first one loads them, the others wait and reuse them.
_BALANCERS_LOCK = threading.Lock()
_BALANCERS: dict[tuple[str, ...], list[str]] = {}


def balancer_addresses() -> list[str]:
    """The addresses of the inventory's balancer hosts (their facts, loaded once per run), for the servers' allow-list."""
    balancers = list(inventory.get_group(haproxy.GROUP, []))
    names = tuple(b.name for b in balancers)
    with _BALANCERS_LOCK:
        if names not in _BALANCERS:
            out: list[str] = []
            for b in balancers:
                for a in haproxy.host_addresses(b.get_fact(Ipv4Addrs), b.get_fact(Ipv6Addrs)):
                    if a not in out:
                        out.append(a)
            _BALANCERS[names] = out
        return list(_BALANCERS[names])


def model_facts(settings: Settings, folder: Path | None = None, manifest: dict | None = None) -> modelinfo.ModelFacts:
    """Model figures from the controller's copy when there is one, else the built-in profile (with the
    weights' size from the hub's file list when it is known)."""
    if folder is not None and (folder / "config.json").is_file():
        return modelinfo.from_model_dir(folder, settings.model_id)
    return modelinfo.with_manifest_weights(modelinfo.builtin_profile(settings.model_id), manifest)


def resolve_model(settings: Settings, name: str | None = None) -> modelstore.Prepared:
    """The model on the hub at the pinned revision: its file list (the controller fetches the files
    when the run executes, see roles/model.py; a ``--dry`` run fetches nothing).

    A bad model id or revision, an unreachable hub or a bad token file stops the run here, before
    any host is changed."""
    try:
        return modelstore.prepare(settings)
    except modelstore.ModelStoreError as e:
        raise PreflightError(f"{name or host.name}: model {settings.model_id}@{settings.model_revision}: {e}") from None


class _Background:
    """``fn(*args)`` in a thread (a greenlet under pyinfra's gevent patching); ``result()`` waits, re-raises."""

    def __init__(self, fn, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def preflight(show: bool = True) -> Plan:
    """Gather this host's facts and return its plan; raise ``PreflightError`` if it cannot be served."""
    if show:
        for w in inventory_warnings(host.data.dict()):
            logger.warning(f"{host.name}: warning: {w}")
    return plan_host(host, show=show)


def plan_host(h: Host, show: bool = False) -> Plan:
    """The plan of the serving host ``h`` from its facts (``h`` may be another host of the inventory:
    the balancer role plans every serving host). The addresses of the inventory's balancers join the
    servers' allow-list when it is on (``haproxy.with_balancers``)."""
    settings = host_settings(h)
    pending = _Background(resolve_model, settings, h.name)  # the hub's answer while the host answers its facts
    files = h.get_fact(PreflightFiles, paths=host_paths(h.data.dict()), user=settings.service_user)
    hardware = h.get_fact(CompileHardware) or {}
    balancers = balancer_addresses()
    prepared = pending.result()
    try:
        facts = build_host_facts(h.name, files or {})
        s = haproxy.with_balancers(settings, balancers)
        p = plan(facts, s, model_facts(settings, prepared.folder, prepared.manifest))
        p.warnings.extend(modelstore.revision_findings(settings, prepared.manifest))
        p = with_compile_classes(p, settings, hardware, prepared.manifest)
    except LockFileError as e:
        raise PreflightError(f"{host.name}: {e}") from None
    except FactsError as e:
        raise PreflightError(f"{h.name}: could not read the host's facts: {e}") from None
    except PlanError as e:
        raise PreflightError(errors_text(e)) from None
    if show:
        logger.info(plan_text(p))
    return p


def with_compile_classes(p: Plan, settings: Settings, hardware: dict, manifest: dict) -> Plan:
    """``p`` with each server's compile class (``mineru_fleet/core/compileclass.py``) from the host's compile hardware
    (the ``CompileHardware`` fact): its caches go to the class folder, which a seed of the same class may fill before
    the server starts (``roles/compilecache.py``)."""
    return seedstore.with_classes(p, settings, hardware, manifest)
