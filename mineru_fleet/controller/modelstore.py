"""The model prefetch, controller side: resolve a pinned revision on ModelScope, fetch it once per fleet,
and decide per host what to send, how much space that needs and what to check.

The hub calls themselves are made by the real ``modelscope`` client in a subprocess
(``mineru_fleet/onhost/modelfetch.py``), with ``MODELSCOPE_DOMAIN`` / ``REQUESTS_CA_BUNDLE`` / the token set
for that step only. Results are memoized per process: pyinfra prepares every host in one process, so
the hub is asked (and, in controller mode, downloaded from) once per deploy.

Host layout::

    <state_dir>/models/<model_id>/<revision>/               the verified revision folder (the server's --model)
    <state_dir>/models/<model_id>/.<revision>.partial/      staging: written, verified, then renamed into place
    <state_dir>/models/<model_id>/.<revision>.manifest.json the hub's file list (path, size, SHA-256)
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mineru_fleet.paths import ONHOST, REPO
from mineru_fleet.onhost.modelfetch import MANIFEST, MARKER, FetchError, check_manifest, manifest_digest, sha256_file
from mineru_fleet.core.planner import Finding
from mineru_fleet.core.settings import Settings

FETCH_SCRIPT = ONHOST / "modelfetch.py"
BRANCH_NAMES = {"master", "main", "dev", "develop"}
MIB = 1 << 20


class ModelStoreError(RuntimeError):
    """The model cannot be resolved, fetched or placed; the message names the model/host/path and the fix."""


# ------------------------------------------------------------------------------------------------
# pure parts
# ------------------------------------------------------------------------------------------------


def revision_findings(settings: Settings, manifest: dict | None = None) -> list[Finding]:
    """``unpinned-model-revision`` when the revision is a branch (the hub says so, or it is named like one)."""
    rev = settings.model_revision
    if (manifest or {}).get("is_branch") or rev in BRANCH_NAMES:
        return [Finding(
            "unpinned-model-revision",
            f"mineru_model_revision={rev!r} is a branch: it moves, so two deploys may serve different weights",
            "pin a tag or commit, e.g. mineru_model_revision: 'v1.0.0'",
        )]
    return []


def folders(settings: Settings, model_dir: str) -> dict[str, str]:
    parent, name = model_dir.rstrip("/").rsplit("/", 1)
    return {"final": model_dir.rstrip("/"), "parent": parent, "staging": f"{parent}/.{name}.partial",
            "manifest": f"{parent}/.{name}.manifest.json"}


def check_program() -> str:
    """The ModelState fact's Python: the "model check" block of modelfetch.py (the same functions the unit tests
    import), run on the host with ``python3 -c`` so that it needs nothing on the host but python3."""
    text = FETCH_SCRIPT.read_text()
    begin, end = text.index("# >>> the model check"), text.index("# <<< the model check")
    return ("from __future__ import annotations\nimport hashlib, json, os, stat, sys\n" + text[begin:end]
            + "raise SystemExit(check_main(sys.argv[1:]))\n")


def state_command(final: str, staging: str, mode: str = "record", digest: str = "") -> str:
    """Shell printing ``@avail BYTES`` (free space where the model goes), then for the revision and staging folders
    ``@dir``, ``@record``, ``@stale``, ``@final|@staging SHA  ./PATH`` and ``@hashed`` lines (``modelfetch.check``).

    ``mode`` ``record``: hash only the files whose size, mtime, ctime or inode differ from the folder's
    verified-files record (all of them when there is no usable record for the manifest ``digest``);
    ``full``: hash every file. Without python3 on the host every file is hashed with sha256sum."""
    q = shlex.quote
    avail = (f"p={q(final)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
             "echo \"@avail $(df -P -B1 \"$p\" | awk 'NR==2{print $4}')\"")
    py = f"python3 -I -c {q(check_program())} {q(final)} {q(staging)} {q(mode)} {q(digest)}"
    shell = "; ".join(
        f"if [ -d {q(d)} ]; then echo '@dir {tag}'; cd {q(d)} && find . -type f ! -path './._____temp/*' "
        f"! -name '.mineru-fleet-*' ! -name '.msc' ! -name '.mv' -print0 | xargs -0 -r sha256sum | sed 's/^/@{tag} /'; fi"
        for tag, d in (("final", final), ("staging", staging)))
    return f"{avail}; if command -v python3 >/dev/null 2>&1; then {py}; else {shell}; fi; true"


@dataclass
class HostModelState:
    avail: int | None = None
    final: dict[str, str] | None = None      # path -> sha256 (None: no folder)
    staging: dict[str, str] | None = None
    record: str | None = None                # the revision folder's record: ok, none, unreadable, other-manifest
    stale: int | None = None                 # its files the record does not vouch for (None: not reported)
    hashed: int | None = None                # files of the revision folder hashed by this check
    hashed_bytes: int = 0


def parse_state(output: str) -> HostModelState:
    st = HostModelState()
    for line in output.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "@avail":
            st.avail = int(rest) if rest.strip().isdigit() else None
        elif tag == "@dir":
            setattr(st, rest.strip(), {})
        elif tag in ("@final", "@staging"):
            sha, _, path = rest.partition("  ")
            d = getattr(st, tag[1:])
            if d is None:
                d = {}
                setattr(st, tag[1:], d)
            d[path.removeprefix("./")] = sha
        elif tag in ("@record", "@stale", "@hashed"):
            which, *words = rest.split()
            if which != "final" or not words:
                continue
            if tag == "@record":
                st.record = words[0]
            elif tag == "@stale" and words[0].isdigit():
                st.stale = int(words[0])
            elif tag == "@hashed" and all(w.isdigit() for w in words[:2]):
                st.hashed, st.hashed_bytes = int(words[0]), int(words[1]) if len(words) > 1 else 0
    return st


def record_is_stale(state: HostModelState) -> bool:
    """The revision folder verifies but its record does not vouch for every file (none yet, a file touched without
    changing, another manifest): writing it again makes the next check cheap. False when the check did not say
    (a host without python3)."""
    return state.final is not None and state.stale is not None and (state.record != "ok" or state.stale > 0)


def check_summary(state: HostModelState, mode: str) -> str:
    """One line on what the check cost, e.g. ``model check (record): 0 of 12 file(s) hashed (0 B), record ok``."""
    if state.final is None:
        return f"model check ({mode}): no revision folder yet"
    if state.hashed is None:
        return f"model check ({mode}): {len(state.final)} file(s) hashed (sha256sum: no python3 on the host)"
    return (f"model check ({mode}): {state.hashed} of {len(state.final)} file(s) hashed ({human(state.hashed_bytes)}), "
            f"record {state.record}" + (f", {state.stale} file(s) not vouched for" if state.stale else ""))


def missing(manifest: dict, hashes: dict[str, str] | None) -> list[dict]:
    """Manifest entries not present with the right SHA-256 in ``hashes``."""
    hashes = hashes or {}
    return [e for e in manifest["files"] if hashes.get(e["path"]) != e["sha256"]]


@dataclass
class TransferPlan:
    up_to_date: bool
    seed_from_final: bool = False            # repair: staging starts as a copy of the current folder
    send: list[dict] = field(default_factory=list)
    bytes_to_write: int = 0
    bytes_needed: int = 0                    # bytes_to_write + margin


def transfer_plan(manifest: dict, state: HostModelState, margin_mib: int) -> TransferPlan:
    """What a host needs: nothing when its revision folder verifies; else the files to write into staging."""
    if state.final is not None and not missing(manifest, state.final):
        return TransferPlan(up_to_date=True)
    seed = state.final is not None and state.staging is None
    have = state.final if seed else state.staging
    send = missing(manifest, have)
    write = sum(e["size"] for e in send)
    if seed:  # the copy of the current folder also takes space
        write += sum(e["size"] for e in manifest["files"] if e not in send)
    return TransferPlan(False, seed, send, write, write + margin_mib * MIB)


def space_error(host: str, path: str, avail: int | None, plan: TransferPlan) -> str | None:
    if avail is None or avail >= plan.bytes_needed:
        return None
    return (f"{host}: not enough free space for the model at {path}: {human(plan.bytes_needed)} needed "
            f"({human(plan.bytes_to_write)} to write + margin), {human(avail)} free; free some space or set "
            "mineru_state_dir to a larger disk (mineru_model_free_space_margin_mib sets the margin)")


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def token_file_ok(path: str) -> str:
    """The token file's path if it is a regular file of mode 0600 or stricter; else ModelStoreError."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ModelStoreError(f"mineru_modelscope_token_file={path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ModelStoreError(f"mineru_modelscope_token_file={path} has mode {oct(stat.S_IMODE(st.st_mode))}: chmod 600 {path}")
    return path


def fetch_env(settings: Settings, domain: str | None) -> dict[str, str]:
    """Environment for one client run: the hub domain and CA, nothing else added (the token stays where it is)."""
    env = dict(os.environ)
    if domain:
        env["MODELSCOPE_DOMAIN"] = domain
    ca = ca_path(settings)
    if ca:
        env["REQUESTS_CA_BUNDLE"] = ca
        env["SSL_CERT_FILE"] = ca
    env.setdefault("MODELSCOPE_LOG_LEVEL", "40")
    return env


def ca_path(settings: Settings) -> str | None:
    """The hub CA file on the controller (relative paths are relative to the repo)."""
    if not settings.modelscope_ca_bundle:
        return None
    p = Path(settings.modelscope_ca_bundle).expanduser()
    return str(p if p.is_absolute() else REPO / p)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with the controller's token (MODELSCOPE_API_TOKEN, and any token given) replaced by ***."""
    for tok in (os.environ.get("MODELSCOPE_API_TOKEN"), *secrets):
        if tok and tok.strip():
            text = text.replace(tok.strip(), "***")
    return text


def local_manifest(folder: Path, settings: Settings) -> dict:
    """Manifest of a controller folder (``model_local_source``: no hub)."""
    from mineru_fleet.onhost.modelfetch import select

    files = [{"Path": p.relative_to(folder).as_posix(), "Size": p.stat().st_size, "Sha256": sha256_file(p), "Type": "blob"}
             for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    chosen = select(files, settings.model_allow_patterns, settings.model_ignore_patterns)
    return {"model_id": settings.model_id, "revision": settings.model_revision, "is_branch": False, "commit": None,
            "files": chosen, "size": sum(e["size"] for e in chosen), "source": str(folder)}


# ------------------------------------------------------------------------------------------------
# the controller's fetch (once per process)
# ------------------------------------------------------------------------------------------------


def cache_folder(settings: Settings) -> Path:
    base = Path(settings.model_cache_dir).expanduser()
    if not base.is_absolute():
        base = REPO / base
    return base / settings.model_id / settings.model_revision


def _client(settings: Settings, args: list[str]) -> dict:
    cmd = [sys.executable, str(FETCH_SCRIPT), *args, "--model-id", settings.model_id, "--revision", settings.model_revision]
    for p in settings.model_allow_patterns:
        cmd += ["--allow", p]
    for p in settings.model_ignore_patterns:
        cmd += ["--ignore", p]
    file_token = None
    if settings.modelscope_token_file:
        token_file = token_file_ok(str(Path(settings.modelscope_token_file).expanduser()))
        cmd += ["--token-file", token_file]
        try:
            file_token = Path(token_file).read_text()
        except OSError as e:
            raise ModelStoreError(f"mineru_modelscope_token_file={token_file}: {e.strerror}") from None
    r = subprocess.run(cmd, env=fetch_env(settings, settings.modelscope_domain), capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] or r.stderr.strip().splitlines()[-3:]
        raise ModelStoreError(redact("; ".join(lines), file_token))
    return json.loads(r.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Prepared:
    manifest: dict
    folder: Path | None      # the controller's verified copy (None in host mode, and in a dry run before any fetch)


def _cached(folder: Path, manifest: dict) -> bool:
    """The controller cache holds this manifest, verified and untouched since (the fetch step's stamp)."""
    from mineru_fleet.onhost.modelfetch import CACHE_STAMP, _stat_signature

    try:
        return json.loads((folder / CACHE_STAMP).read_text()) == {"files": manifest["files"], "stat": _stat_signature(folder, manifest)}
    except (OSError, ValueError, KeyError):
        return False


@functools.lru_cache(maxsize=None)
def _prepare(key: str, fetch: bool) -> Prepared:
    settings = Settings(**json.loads(key))
    if settings.model_local_source:
        folder = Path(settings.model_local_source)
        if not folder.is_absolute():
            folder = REPO / folder
        if not (folder / "config.json").is_file():
            raise ModelStoreError(f"mineru_model_local_source={settings.model_local_source!r} is not a model folder on the controller")
        return Prepared(local_manifest(folder, settings), folder)
    if settings.model_fetch_mode == "host":
        return Prepared(_client(settings, ["resolve"]), None)
    folder = cache_folder(settings)
    if not fetch:  # a dry run: the hub's file list only (no file bytes), and the cache as it is
        manifest = _client(settings, ["resolve"])
        return Prepared(manifest, folder if _cached(folder, manifest) else None)
    manifest = _client(settings, ["fetch", "--local-dir", str(folder)])
    return Prepared(manifest, folder)


def _key(settings: Settings) -> str:
    keys = ("model_id", "model_revision", "model_fetch_mode", "modelscope_domain", "modelscope_ca_bundle",
            "modelscope_token_file", "model_cache_dir", "model_allow_patterns", "model_ignore_patterns", "model_local_source")
    return json.dumps({k: getattr(settings, k) for k in keys}, sort_keys=True)


def prepare(settings: Settings, fetch: bool = False) -> Prepared:
    """The model at its pinned revision, once per process; ModelStoreError when impossible.

    By default (what the preflight does while pyinfra prepares) nothing changes anywhere: the hub is
    asked for the file list only, and the controller cache is used when it already holds the revision
    (``folder``), else ``folder`` is None and the model role fetches it when the run executes
    (``fetch_to_cache``). ``fetch=True`` downloads into the controller cache now (controller mode).
    """
    return _checked(settings, fetch)


#: one lock per (key, fetch): pyinfra prepares every host at once (gevent greenlets, which ``threading`` becomes
#: under pyinfra's monkey-patching), and an lru_cache alone lets each of them miss and ask the hub in parallel
_LOCKS: dict[tuple[str, bool], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _prepare_once(key: str, fetch: bool) -> Prepared:
    """``_prepare`` once per process even when every host asks at the same time (the others wait for the first)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault((key, fetch), threading.Lock())
    with lock:
        return _prepare(key, fetch)


def _checked(settings: Settings, fetch: bool) -> Prepared:
    prepared = _prepare_once(_key(settings), fetch)
    try:  # every path the hub listed stays inside the model folder (rsync/put destinations, the host's verify)
        check_manifest(prepared.manifest)
    except FetchError as e:
        raise ModelStoreError(f"the hub's file list for {settings.model_id}@{settings.model_revision} is unusable: {e}") from None
    return prepared


def fetch_to_cache(settings: Settings) -> Prepared:
    """Download the revision into the controller cache (resumable, verified); once per process.

    The model role calls it through ``python.call`` at execute time, so ``pyinfra --dry`` never fetches."""
    return _checked(settings, True)


def source_folder(settings: Settings) -> Path:
    """The controller folder the hosts' files come from: ``model_local_source`` or the cache."""
    if settings.model_local_source:
        folder = Path(settings.model_local_source)
        return folder if folder.is_absolute() else REPO / folder
    return cache_folder(settings)


def rsync_filter(paths: list[str]) -> list[str]:
    """rsync flags that send exactly ``paths`` (relative to the source folder), each shell-quoted.

    Every folder is walked (``*/``), only the named files are included, empty folders pruned.
    """
    def anchored(path: str) -> str:
        return "/" + "".join("\\" + c if c in "*?[\\" else c for c in path)

    return ["--prune-empty-dirs", "--include=" + shlex.quote("*/"),
            *["--include=" + shlex.quote(anchored(p)) for p in paths], "--exclude=" + shlex.quote("*")]


__all__ = ["MANIFEST", "MARKER", "ModelStoreError", "Prepared", "TransferPlan", "fetch_to_cache", "prepare",
           "rsync_filter", "source_folder", "transfer_plan"]
