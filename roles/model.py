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

from pyinfra import host, logger
from pyinfra.api import FactBase, FileUploadCommand, RsyncCommand, StringCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import Which
from pyinfra.operations import files, python, server

from mineru_fleet.controller import modelstore
from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.core.units import ENV_DIR, paths

HOST_CA = f"{ENV_DIR}/modelhub-ca.pem"
#: root-only folder (0700) for secrets: whatever mode a file in it has while being written, nobody else can open it
PRIVATE_DIR = f"{ENV_DIR}/private"
HOST_TOKEN = f"{PRIVATE_DIR}/modelscope-token"


@operation(is_idempotent=False)
def secret_file(content: str, dest: str):
    """Upload ``content`` to ``dest`` (inside PRIVATE_DIR), then chown root and chmod 600.

    Unlike ``files.put`` this prints no diff under ``pyinfra --diff`` (the old and new content would
    be the token) and never reads the remote file back. Connected as root, the upload goes straight
    to ``dest`` inside the 0700 folder; with ``_sudo`` pyinfra first writes its temporary copy into
    ``_temp_dir`` (set it to a 0700 folder of the SSH user to keep that copy private too)."""
    yield FileUploadCommand(io.BytesIO(content.encode()), dest,
                            remote_temp_filename=host.get_temp_filename(dest, temp_directory=host.data.get("_temp_dir")))
    yield StringCommand("chown", "root:root", shlex.quote(dest))
    yield StringCommand("chmod", "600", shlex.quote(dest))


class ModelError(PyinfraError):
    """The model cannot be placed on this host; the message says where and why."""


class ModelState(FactBase):
    """Free space where the model goes and the SHA-256 of every file in the revision and staging folders: hashed now,
    or (``mode`` record) taken from the revision folder's verified-files record for files whose stat is unchanged."""

    def command(self, final: str, staging: str, mode: str = "record", digest: str = "") -> str:
        return modelstore.state_command(final, staging, mode, digest)

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
    state = host.get_fact(ModelState, final=f["final"], staging=f["staging"], mode=settings.model_verify,
                          digest=modelstore.manifest_digest(manifest["files"]))
    logger.info(f"{host.name}: {modelstore.check_summary(state, settings.model_verify)}")
    tp = modelstore.transfer_plan(manifest, state, settings.model_free_space_margin_mib)
    bin_dir = paths(settings)["bin_dir"]
    fetcher = f"{bin_dir}/mineru-fleet-modelfetch"
    if tp.up_to_date:
        if modelstore.record_is_stale(state):  # verified, but the record does not vouch for it all: write it again
            _tools(settings, f, manifest, fetcher)
            server.shell(name=f"Record the verified files of {settings.model_id}@{settings.model_revision}",
                         commands=[record_command(fetcher, f)])
        return []  # the model is unchanged: nothing to restart
    err = modelstore.space_error(host.name, f["parent"], state.avail, tp)
    if err:
        raise ModelError(err)
    if settings.model_fetch_mode == "controller" and not host.get_fact(Which, command="rsync"):
        raise ModelError(f"{host.name}: rsync is not installed; the model files travel with rsync over SSH."
                         " Fix: install it on the host (apt-get install rsync), or set model_fetch_mode: host")

    _tools(settings, f, manifest, fetcher)
    if tp.seed_from_final:
        server.shell(name="Staging folder from the current revision (repair)", commands=[repair_command(f)])

    if settings.model_fetch_mode == "host" and prepared.folder is None:
        env = {"MODELSCOPE_DOMAIN": settings.modelscope_host_domain or settings.modelscope_domain or "",
               "MODELSCOPE_LOG_LEVEL": "40"}
        if settings.modelscope_ca_bundle:
            files.directory(name="Config folder", path=ENV_DIR, user="root", group="root", mode="755")
            files.put(name="Hub CA", src=modelstore.ca_path(settings), dest=HOST_CA, mode="644")
            env.update(REQUESTS_CA_BUNDLE=HOST_CA, SSL_CERT_FILE=HOST_CA)
        token_file = None
        token = _controller_token(settings)
        if token:
            files.directory(name="Private folder (0700, root)", path=PRIVATE_DIR, user="root", group="root", mode="700")
            secret_file(name="ModelScope token (0600, no diff)", content=token, dest=HOST_TOKEN)
            token_file = HOST_TOKEN
        server.shell(
            name=f"snapshot_download {settings.model_id}@{settings.model_revision} on the host",
            commands=[host_fetch_command(settings, env, fetcher, f["staging"], token_file,
                                         keep_token=settings.modelscope_keep_token_file)],
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
        commands=[install_command(fetcher, f, settings.model_keep_revisions)],
    )
    return [install]


def _tools(settings: Settings, f: dict[str, str], manifest: dict, fetcher: str) -> None:
    """The model folder's parent, the fetch/verify tool and the manifest on the host."""
    files.directory(name="Model folder parent", path=f["parent"], user="root", group="root", mode="755")
    files.directory(name="Tools folder", path=fetcher.rsplit("/", 1)[0], user="root", group="root", mode="755")
    files.put(name="Model fetch/verify tool", src=str(modelstore.FETCH_SCRIPT), dest=fetcher, mode="755")
    files.put(name="Model manifest (hub file list)", src=io.StringIO(json.dumps(manifest, sort_keys=True, indent=1)),
              dest=f["manifest"], mode="644")


def repair_command(f: dict[str, str]) -> str:
    """Shell: a staging copy of the current revision folder (quoted words)."""
    q = shlex.quote
    return f"rm -rf -- {q(f['staging'])} && cp -a -- {q(f['final'])} {q(f['staging'])}"


def host_fetch_command(settings: Settings, env: dict[str, str], fetcher: str, staging: str, token_file: str | None,
                       keep_token: bool = False) -> str:
    """Shell: snapshot_download on the host into ``staging`` (every word quoted; the token stays in its file,
    which is removed right after the download, failed or not, unless ``keep_token``)."""
    q = shlex.quote
    words = ["env", *(q(f"{k}={v}") for k, v in env.items() if v), q(settings.model_fetch_python), q(fetcher), "fetch",
             "--model-id", q(settings.model_id), "--revision", q(settings.model_revision)]
    for p in settings.model_allow_patterns:
        words += ["--allow", q(p)]
    for p in settings.model_ignore_patterns:
        words += ["--ignore", q(p)]
    words += ["--local-dir", q(staging)]
    if token_file:
        words += ["--token-file", q(token_file)]
    cmd = f"mkdir -p -- {q(staging)} && {' '.join(words)} >/dev/null"
    if token_file and not keep_token:
        cmd = f"{cmd}; rc=$?; rm -f -- {q(token_file)}; exit $rc"
    return cmd


def install_command(fetcher: str, f: dict[str, str], keep: int) -> str:
    """Shell: verify the staging folder against the manifest and rename it into place (quoted words)."""
    q = shlex.quote
    return (f"python3 {q(fetcher)} install --manifest {q(f['manifest'])} --staging {q(f['staging'])} --final {q(f['final'])}"
            f" --keep {int(keep)} --in-use-env-dir {q(ENV_DIR)}")


def record_command(fetcher: str, f: dict[str, str]) -> str:
    """Shell: check the installed revision folder (only what its record does not vouch for) and write its record
    again (quoted words)."""
    q = shlex.quote
    return f"python3 {q(fetcher)} record --manifest {q(f['manifest'])} --final {q(f['final'])}"


def _controller_token(settings: Settings) -> str | None:
    import os
    from pathlib import Path

    if settings.modelscope_token_file:
        return Path(modelstore.token_file_ok(str(Path(settings.modelscope_token_file).expanduser()))).read_text().strip() or None
    return os.environ.get("MODELSCOPE_API_TOKEN") or None
