"""Runtime role: the service user and a uv-managed venv per release, from the profile's lock.

    /opt/mineru-fleet/releases/<profile>-<lock digest>/venv     one folder per lock (kept for rollback)
    /opt/mineru-fleet/current -> releases/<id>                   what the unit runs
    /opt/mineru-fleet/bin/{uv, mineru-fleet-ready, mineru-fleet-gpucheck}

A release is installed once: a rerun with the same lock installs nothing. A new lock makes a new
release folder; ``current`` moves only after the install (and, on CUDA hosts, the GPU check)
succeeded, so a failed upgrade leaves the previous release serving.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import server

from mineru_fleet.controller.locks import release_lock
from mineru_fleet.paths import ONHOST, REPO
from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import paths
from mineru_fleet.controller.wheelhouse import release_id
from roles.batch import Batch

COMPLETE = ".mineru-fleet-complete"
CUDA_NCCL = "2.27.3"  # nvidia-nccl-cu12 pinned by locks/cuda.txt (torch 2.8.0)


def controller_uv() -> str:
    """The uv binary shipped to hosts (the project's own, pinned by uv.lock)."""
    here = REPO / ".venv" / "bin" / "uv"
    found = str(here) if here.is_file() else shutil.which("uv")
    if not found:
        raise RuntimeError("no uv binary on the controller: run `uv sync` first")
    return found


def install_command(venv: str, lock: str, uv: str, settings: Settings) -> str:
    """Shell that (re)builds ``venv`` from ``lock`` with uv, offline when a find-links URL is set.

    Every word built from inventory data goes through ``shlex.quote`` (the values are validated in
    preflight too: this is the second wall)."""
    q = shlex.quote
    source = (
        f"--no-index --find-links {q(settings.wheel_find_links)}" if settings.wheel_find_links else "--index-url https://pypi.org/simple"
    )
    # uv's cache on the install disk (not /tmp, often a small tmpfs); venv files are hardlinks
    # into it, so removing the cache afterwards costs nothing and leaves no second copy behind
    cache = q(f"{settings.install_dir}/.uv-cache")
    uv_env = f"UV_CACHE_DIR={cache}"
    return (
        f"set -e; rm -rf -- {q(venv)}; "
        f"{uv_env} {q(uv)} venv --quiet --python /usr/bin/python3 {q(venv)} && "
        f"{uv_env} {q(uv)} pip sync --quiet --python {q(venv + '/bin/python')} {source} {q(lock)} && "
        f"rm -rf -- {cache}"
    )


def gpu_check_command(venv: str, bin_dir: str, gpus: list[str]) -> str:
    """Shell running the GPU check of a new CUDA release (quoted words)."""
    q = shlex.quote
    return (f"CUDA_VISIBLE_DEVICES={q(','.join(gpus))} {q(venv + '/bin/python')} {q(bin_dir + '/mineru-fleet-gpucheck')}"
            f" --expect-gpus {len(gpus)} --expect-nccl {q(CUDA_NCCL)}")


def release_steps(plan: Plan, settings: Settings, rel: str) -> str:
    """The whole shell of a release install: build the venv, check the GPUs (CUDA), import vllm, mark it complete,
    under an exclusive lock of the release folder (``flock``), skipped when the release is already complete."""
    q = shlex.quote
    p = paths(settings)
    venv = f"{rel}/venv"
    steps = install_command(venv, f"{rel}/lock.txt", f"{p['bin_dir']}/uv", settings)
    if plan.profile == "cuda":
        gpus = sorted({i for s in plan.servers for i in (s.cuda_visible_devices or "").split(",") if i})
        steps += " && " + gpu_check_command(venv, p["bin_dir"], gpus)
    steps += f" && {q(venv + '/bin/python')} -c 'import vllm' && touch {q(venv + '/' + COMPLETE)}"
    # One install per release folder at a time: an install left running by a cut connection or a killed
    # controller is waited for (not raced by a second `rm -rf venv`), and a release it completed is kept.
    marker = q(venv + "/" + COMPLETE)
    return f"flock -w 3600 {q(rel + '/.install.lock')} sh -c {q(f'test -f {marker} || {{ {steps}; }}')}"


def release_of(plan: Plan, settings: Settings) -> str:
    """The release id this host's plan installs (``<profile>-<lock digest>``)."""
    return release_id(plan.profile, release_lock(plan.profile, settings.runtime_lock))


@deploy("Runtime")
def runtime(plan: Plan, settings: Settings) -> list:
    """Install the release of this plan's profile; returns the operations whose change means "restart"."""
    p = paths(settings)
    lock = release_lock(plan.profile, settings.runtime_lock)
    rid = release_id(plan.profile, lock)
    rel = f"{p['releases']}/{rid}"
    venv = f"{rel}/venv"
    user = settings.service_user

    b = Batch()  # one command reads all of it; a converged host gets no operation (roles/batch.py)
    b.group(name=f"Group {user}", group=user, system=True)
    b.user(name=f"User {user} (system, no login)", user=user, group=user, system=True, shell="/usr/sbin/nologin",
           home=f"{settings.state_dir}/home")
    for d in (settings.install_dir, p["releases"], p["bin_dir"], rel):
        b.directory(name=f"Directory {d}", path=d, user="root", group="root", mode="755")
    b.put(name="uv binary", src=controller_uv(), dest=f"{p['bin_dir']}/uv", mode="755")
    b.put(name="Readiness gate", src=str(ONHOST / "ready.py"), dest=f"{p['bin_dir']}/mineru-fleet-ready", mode="755")
    b.put(name="GPU check", src=str(ONHOST / "gpucheck.py"), dest=f"{p['bin_dir']}/mineru-fleet-gpucheck", mode="755")
    b.put(name=f"Lock {plan.profile}", src=str(lock), dest=f"{rel}/lock.txt", mode="644")

    changes = []
    if not host.get_fact(File, path=f"{venv}/{COMPLETE}"):
        steps = release_steps(plan, settings, rel)
        changes.append(b.then(lambda: server.shell(name=f"Install release {rid} ({plan.profile})", commands=[steps])))

    link = b.link(name=f"Current release -> {rid}", path=p["current"], target=rel)
    b.apply()
    return changes + [link]
