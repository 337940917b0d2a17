"""Compile-cache role: the first server of a compile class compiles, every other one starts from its caches.

Two stages around the service role (``deploy.py``):

- ``seed`` (before the servers start): each server's class folder
  ``<state_dir>/cache/<server>/compile/<class key>/`` (``mineru_fleet/core/compileclass.py`` says what the key
  covers and why), with its ``class.json``; when the folder is not finished (no server of the class passed its
  gate here yet) and the controller holds a seed of the class, the seed is sent and installed into it --
  after ``mineru-fleet-compilecache install`` checked it again with this host's own hardware (a seed that does
  not match is refused and not used: the server compiles its own).
- ``harvest`` (after the readiness gate): the folder is marked finished; when the controller has no seed of
  the class yet, the first host of it in the run packs its folder and the controller fetches and checks it
  (``mineru_fleet/controller/seedstore.py``); old class folders beyond ``mineru_compile_cache_keep`` go.

A no-op run changes nothing: every decision is made from facts (is the folder finished, does the store hold
the seed) while pyinfra prepares. ``mineru_compile_cache_seed: false`` keeps the class folders (each server
compiles its own) and sends and fetches nothing.

Example (deploy.py)::

    from roles import compilecache
    compilecache.seed(plan, settings)
    ...
    compilecache.harvest(plan, settings)
"""

from __future__ import annotations

import io
import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, python, server

from mineru_fleet.controller import seedstore
from mineru_fleet.controller.facts import PrunableClassFolders
from mineru_fleet.core.compileclass import cache_root, class_dir, server_gpus
from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import ENV_DIR, RECORDS, paths
from mineru_fleet.onhost.compilecache import CLASS_FILE, COMPLETE
from mineru_fleet.paths import ONHOST
from roles.batch import Batch

TOOL = "mineru-fleet-compilecache"
#: class key -> the host that harvests it in this run (the first to ask): one fetch per class per run
_HARVESTER: dict[str, str] = {}


def seeds_dir(settings: Settings) -> str:
    return f"{settings.state_dir}/cache/.seeds"


def install_command(settings: Settings, seed: str, folder: str, key: str, gpus: list[str]) -> str:
    """Shell installing ``seed`` into ``folder`` (checked against ``key`` and this host), then removing it."""
    q = shlex.quote
    tool = f"{paths(settings)['bin_dir']}/{TOOL}"
    gpu_arg = f" --gpus {q(','.join(gpus))}" if gpus else ""
    return (f"python3 {q(tool)} install --seed {q(seed)} --dir {q(folder)} --key {q(key)} "
            f"--user {q(settings.service_user)}{gpu_arg}; rm -f -- {q(seed)}")


def pack_command(settings: Settings, folder: str, out: str) -> str:
    q = shlex.quote
    return f"python3 {q(paths(settings)['bin_dir'] + '/' + TOOL)} pack --dir {q(folder)} --out {q(out)}"


def prune_refs(settings: Settings) -> list[str]:
    """Folders whose env files name class folders to keep: the servers' own and the current deployment record's."""
    return [ENV_DIR, f"{settings.state_dir}/{RECORDS}/current"]


def prune_command(settings: Settings, root: str, key: str) -> str:
    q = shlex.quote
    refs = " ".join(f"--refs-in {q(r)}" for r in prune_refs(settings))
    return (f"python3 {q(paths(settings)['bin_dir'] + '/' + TOOL)} prune --root {q(root)} --keep {int(settings.compile_cache_keep)}"
            f" --protect {q(key)} {refs}")


@deploy("Compile cache: seed")
def seed(plan: Plan, settings: Settings) -> None:
    """Each server's class folder, filled from the controller's seed of its class when it is not finished here."""
    user = settings.service_user
    b = Batch()  # one command reads all of it; a converged host gets no operation (roles/batch.py)
    b.put(name="Compile cache tool", src=str(ONHOST / "compilecache.py"), dest=f"{paths(settings)['bin_dir']}/{TOOL}", mode="755")
    for sv in plan.servers:
        cls = plan.compile_classes[sv.name]
        folder = class_dir(settings.state_dir, sv.name, cls.key)
        root = cache_root(settings.state_dir, sv.name)
        for d in (root, f"{root}/compile", folder):
            b.directory(name=f"Compile cache folder {d}", path=d, user=user, group=user, mode="700")
        b.put(name=f"Compile class of server {sv.name}: {cls.key}", src=io.StringIO(cls.class_json()),
              dest=f"{folder}/{CLASS_FILE}", user="root", group="root", mode="644")
        if not (settings.compile_cache_seed and cls.seedable) or host.get_fact(File, path=f"{folder}/{COMPLETE}"):
            continue  # sharing off, hardware unknown, or this host has the class's caches already
        src = seedstore.seed_path(settings, cls.key)
        if not src.is_file():
            continue  # the first server of its class: it compiles, ``harvest`` keeps its caches
        dest = f"{seeds_dir(settings)}/{cls.key}.tar.gz"
        b.then(lambda: files.directory(name="Compile cache seeds folder", path=seeds_dir(settings), user="root", group="root", mode="700"))
        b.then(lambda src=src, dest=dest, sv=sv, cls=cls: files.put(
            name=f"Send the compile cache seed of class {cls.key} (server {sv.name})", src=str(src), dest=dest,
            user="root", group="root", mode="600"))
        b.then(lambda dest=dest, folder=folder, cls=cls, sv=sv: server.shell(
            name=f"Install the seed into server {sv.name}'s class folder (checked with this host's hardware)",
            commands=[install_command(settings, dest, folder, cls.key, server_gpus(sv))]))
    b.apply()


@deploy("Compile cache: harvest")
def harvest(plan: Plan, settings: Settings) -> None:
    """After the gate: mark each class folder finished; fetch a seed of a class the controller lacks; prune."""
    for sv in plan.servers:
        cls = plan.compile_classes[sv.name]
        folder = class_dir(settings.state_dir, sv.name, cls.key)
        done = Batch()  # a finished folder: no operation
        done.file(name=f"Server {sv.name}'s class folder finished (its server passed the gate)", path=f"{folder}/{COMPLETE}",
                  user="root", group="root", mode="644")
        done.apply()
        if (settings.compile_cache_seed and cls.seedable and not seedstore.seed_path(settings, cls.key).is_file()
                and _HARVESTER.setdefault(cls.key, host.name) == host.name):
            out = f"{seeds_dir(settings)}/out-{cls.key}.tar.gz"
            files.directory(name="Compile cache seeds folder", path=seeds_dir(settings), user="root", group="root", mode="700")
            server.shell(name=f"Pack server {sv.name}'s compile caches (class {cls.key})", commands=[pack_command(settings, folder, out)])
            python.call(name="Controller store folder", function=_prepare_incoming, settings=settings, key=cls.key,
                        host_name=host.name)
            files.get(name=f"Fetch the seed of class {cls.key} to the controller", src=out,
                      dest=str(seedstore.incoming_path(settings, cls.key, host.name)), force=True)
            python.call(name=f"Check and store the seed of class {cls.key}", function=_accept, settings=settings, key=cls.key,
                        host_name=host.name)
            files.file(name="Remove the packed seed from the host", path=out, present=False)
        root = f"{cache_root(settings.state_dir, sv.name)}/compile"
        if host.get_fact(PrunableClassFolders, root=root, keep=settings.compile_cache_keep, protect=cls.key,
                         refs_in=prune_refs(settings)):
            server.shell(name=f"Prune server {sv.name}'s old class folders (keep {settings.compile_cache_keep})",
                         commands=[prune_command(settings, root, cls.key)])


def _accept(settings: Settings, key: str, host_name: str) -> None:
    logger.info(f"{host_name}: compile cache: {seedstore.accept(settings, key, host_name)}")


def _prepare_incoming(settings: Settings, key: str, host_name: str) -> None:
    seedstore.prepare_incoming(settings, key, host_name)
