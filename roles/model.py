"""Model role: the pinned ModelScope revision on every host, verified, resumable and atomic.

    <state_dir>/models/<model_id>/<revision>/            what the server loads (--model, MINERU_MODEL_SOURCE=local)
    <state_dir>/models/<model_id>/.<revision>.partial/   staging, renamed into place once every SHA-256 matches

Modes (``model_fetch_mode``):

- ``controller`` (default): the preflight ran ``snapshot_download`` once on the controller (into
  ``model_cache_dir``); here each host gets, over the pyinfra connection, only the files whose SHA-256
  differs from the hub's file list. Hub traffic: 1x the model size, whatever the fleet size.
- ``host``: each host runs ``snapshot_download`` itself (``model_fetch_python``), into its staging folder.

A host whose revision folder verifies gets no operation at all (0 bytes, no change). A host with a
missing or corrupt file gets a staging copy of its folder, the bad files replaced, and the verified
copy renamed into place. An interrupted run leaves the staging folder (and the client's partial
files), which the next run completes. Free space is checked before anything is written.
"""

from __future__ import annotations

import io
import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, RsyncCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import Which
from pyinfra.operations import files, python, server

from mineru_fleet.controller import modelstore
from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import ENV_DIR, paths

HOST_CA = f"{ENV_DIR}/modelhub-ca.pem"
HOST_TOKEN = f"{ENV_DIR}/modelscope-token"


class ModelError(PyinfraError):
    """The model cannot be placed on this host; the message says where and why."""


class ModelState(FactBase):
    """Free space where the model goes and the SHA-256 of every file in the revision and staging folders."""

    def command(self, final: str, staging: str) -> str:
        return modelstore.state_command(final, staging)

    def process(self, output):
        return modelstore.parse_state("\n".join(output))


@operation(is_idempotent=False)
def send_files(src: str, dest: str, paths: list[str]):
    """Stream the named files of the controller folder ``src`` into ``dest`` on the host with rsync,
    over the host's own SSH settings (a partial file is kept and resumed by the next run).

    The source only has to exist when the operation runs, so the controller may fetch it in an earlier
    operation of the same run (and a ``--dry`` run fetches nothing). Example::

        send_files(name="Send model files", src="/cache/m/v1", dest="/var/lib/m/.v1.partial", paths=["config.json"])
    """
    try:
        host.check_can_rsync()
    except NotImplementedError as e:
        raise ModelError(f"{host.name}: cannot send the model with rsync: {e.args[0]} (install rsync on the controller)") from None
    flags = ["--recursive", "--times", "--partial", "--chmod=D755,F644", *modelstore.rsync_filter(paths)]
    yield RsyncCommand(shlex.quote(src.rstrip("/") + "/"), shlex.quote(dest.rstrip("/") + "/"), flags)


@deploy("Model")
def model(plan: Plan, settings: Settings) -> list:
    """Place the model revision; returns the operation whose change means "restart" (none when up to date)."""
    try:
        prepared = modelstore.prepare(settings)
    except modelstore.ModelStoreError as e:
        raise ModelError(f"{host.name}: {e}") from None
    manifest = prepared.manifest
    f = modelstore.folders(settings, plan.model_dir)
    state = host.get_fact(ModelState, final=f["final"], staging=f["staging"])
    tp = modelstore.transfer_plan(manifest, state, settings.model_free_space_margin_mib)
    if tp.up_to_date:
        return []
    err = modelstore.space_error(host.name, f["parent"], state.avail, tp)
    if err:
        raise ModelError(err)
    if settings.model_fetch_mode == "controller" and not host.get_fact(Which, command="rsync"):
        raise ModelError(f"{host.name}: rsync is not installed; the model files travel with rsync over SSH."
                         " Fix: install it on the host (apt-get install rsync), or set model_fetch_mode: host")

    bin_dir = paths(settings)["bin_dir"]
    fetcher = f"{bin_dir}/mineru-fleet-modelfetch"
    files.directory(name="Model folder parent", path=f["parent"], user="root", group="root", mode="755")
    files.directory(name="Tools folder", path=bin_dir, user="root", group="root", mode="755")
    files.put(name="Model fetch/verify tool", src=str(modelstore.FETCH_SCRIPT), dest=fetcher, mode="755")
    files.put(name="Model manifest (hub file list)", src=io.StringIO(json.dumps(manifest, sort_keys=True, indent=1)),
              dest=f["manifest"], mode="644")
    if tp.seed_from_final:
        server.shell(name="Staging folder from the current revision (repair)",
                     commands=[f"rm -rf {f['staging']} && cp -a {f['final']} {f['staging']}"])

    if settings.model_fetch_mode == "host" and prepared.folder is None:
        env = {"MODELSCOPE_DOMAIN": settings.modelscope_host_domain or settings.modelscope_domain or "",
               "MODELSCOPE_LOG_LEVEL": "40"}
        if settings.modelscope_ca_bundle:
            files.directory(name="Config folder", path=ENV_DIR, user="root", group="root", mode="755")
            files.put(name="Hub CA", src=modelstore.ca_path(settings), dest=HOST_CA, mode="644")
            env.update(REQUESTS_CA_BUNDLE=HOST_CA, SSL_CERT_FILE=HOST_CA)
        args = ""
        token = _controller_token(settings)
        if token:
            files.put(name="ModelScope token (0600)", src=io.StringIO(token), dest=HOST_TOKEN, mode="600",
                      user="root", group="root")
            args = f" --token-file {HOST_TOKEN}"
        exports = " ".join(f"{k}={v}" for k, v in env.items() if v)
        patterns = "".join(f" --allow '{p}'" for p in settings.model_allow_patterns)
        patterns += "".join(f" --ignore '{p}'" for p in settings.model_ignore_patterns)
        server.shell(
            name=f"snapshot_download {settings.model_id}@{settings.model_revision} on the host",
            commands=[f"mkdir -p {f['staging']} && env {exports} {settings.model_fetch_python} {fetcher} fetch"
                      f" --model-id {settings.model_id} --revision {settings.model_revision}{patterns}"
                      f" --local-dir {f['staging']}{args} >/dev/null"],
        )
    else:
        if prepared.folder is None:  # the controller cache lacks this revision: fetch it when the run executes
            python.call(name=f"Fetch {settings.model_id}@{settings.model_revision} into the controller cache (once per run)",
                        function=modelstore.fetch_to_cache, settings=settings)
        if not tp.seed_from_final:
            files.directory(name="Staging folder", path=f["staging"], user="root", group="root", mode="755")
        send_files(
            name=f"Send {len(tp.send)} model file(s) ({modelstore.human(sum(e['size'] for e in tp.send))}) with rsync: "
                 + ", ".join(e["path"] for e in tp.send[:6]) + (", ..." if len(tp.send) > 6 else ""),
            src=str(modelstore.source_folder(settings)), dest=f["staging"], paths=[e["path"] for e in tp.send],
        )

    install = server.shell(
        name=f"Verify and install {settings.model_id}@{settings.model_revision}",
        commands=[f"python3 {fetcher} install --manifest {f['manifest']} --staging {f['staging']} --final {f['final']}"
                  f" --keep {settings.model_keep_revisions}"],
    )
    return [install]


def _controller_token(settings: Settings) -> str | None:
    import os
    from pathlib import Path

    if settings.modelscope_token_file:
        return Path(modelstore.token_file_ok(str(Path(settings.modelscope_token_file).expanduser()))).read_text().strip() or None
    return os.environ.get("MODELSCOPE_API_TOKEN") or None
