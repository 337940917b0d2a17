#!/usr/bin/env python3
"""Fetch a model revision with the real ``modelscope`` client, and install it atomically.

Standalone (stdlib, plus ``modelscope`` for ``resolve``/``fetch``): the model role runs it on the
controller and copies it to hosts (``/opt/mineru-fleet/bin/mineru-fleet-modelfetch``).

    resolve --model-id ID --revision R [--allow P ...] [--ignore P ...]
        the hub's file list at R (filtered like snapshot_download) -> JSON manifest on stdout;
        exit 3 with a message when the model or the revision does not exist
    fetch   ... --local-dir DIR
        snapshot_download(ID, revision=R, local_dir=DIR) (resumes: finished files are kept, a partial
        file continues with HTTP Range), then the manifest -> stdout
    install --manifest M --staging S --final F [--keep 2] [--in-use-env-dir /etc/mineru-fleet]
        every file of S against M (size + SHA-256), then S -> F by rename (an existing F is swapped
        out and removed), then keep the newest KEEP revision folders next to F, and every one a
        server's environment file names (a model-only deploy never removes what a server loads)

Environment: MODELSCOPE_DOMAIN (HOST[:PORT]; the scheme is https), REQUESTS_CA_BUNDLE (a private CA),
MODELSCOPE_API_TOKEN or ``--token-file`` (0600) for private models. The token is never printed.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

MARKER = ".mineru-fleet-verified"
MANIFEST = ".mineru-fleet-manifest.json"
CACHE_STAMP = ".mineru-fleet-cache.json"  # the controller cache: the verified manifest + each file's size and mtime
#: Folders snapshot_download(local_dir=...) leaves next to the files.
CLIENT_LEFTOVERS = ("._____temp", ".msc", ".mv", ".mdl")


class FetchError(RuntimeError):
    pass


class BadInput(FetchError):
    """Unusable arguments or manifest (exit 2, like argparse), as opposed to a hub or download failure (exit 3)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def select(files: list[dict], allow: list[str] | None, ignore: list[str] | None) -> list[dict]:
    """The files snapshot_download fetches: blobs, minus ``ignore`` matches, only ``allow`` matches (fnmatch on Path)."""
    out = []
    for f in files:
        if f.get("Type") == "tree":
            continue
        p = f["Path"]
        if ignore and any(fnmatch.fnmatch(p, pat) for pat in ignore):
            continue
        if allow and not any(fnmatch.fnmatch(p, pat) for pat in allow):
            continue
        out.append({"path": p, "size": int(f["Size"]), "sha256": f.get("Sha256")})
    return sorted(out, key=lambda e: e["path"])


def safe_relpath(path: object) -> str:
    """``path`` if it names a file inside a folder (relative, normalised, no ``..``, no control characters); else FetchError.

    Manifest paths come from the hub (or a file on the host): a path like ``../x`` or ``/etc/x``
    must never be read, written or "verified" outside the model folder."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise BadInput(f"manifest path {str(path)[:80]!r} is not a relative path inside the model folder")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise BadInput(f"manifest path {path[:80]!r} contains a control character")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadInput(f"manifest path {path[:80]!r} leaves the model folder or is not normalised (., .., //)")
    return path


def check_manifest(manifest: object) -> dict:
    """The manifest if its shape is ours (files: [{path, size, sha256}], every path inside the folder); else FetchError."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise BadInput("the manifest is not a JSON object with a 'files' list (re-run the deploy to write it again)")
    for e in manifest["files"]:
        if not isinstance(e, dict) or not isinstance(e.get("size"), int) or e["size"] < 0:
            raise BadInput(f"manifest entry {str(e)[:80]!r} has no path/size")
        safe_relpath(e.get("path"))
        sha = e.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise BadInput(f"manifest entry {e['path'][:80]!r}: sha256 is not 64 hex digits")
    return manifest


def verify(folder: Path, manifest: dict) -> list[str]:
    """Problems of ``folder`` against ``manifest`` (missing file, wrong size, wrong SHA-256); [] when it matches."""
    problems = []
    check_manifest(manifest)
    for e in manifest["files"]:
        p = folder / e["path"]
        if not p.is_file():
            problems.append(f"missing {e['path']}")
        elif p.stat().st_size != e["size"]:
            problems.append(f"size {e['path']}: {p.stat().st_size} != {e['size']}")
        elif e.get("sha256") and sha256_file(p) != e["sha256"]:
            problems.append(f"sha256 {e['path']}: mismatch")
    return problems


def read_token(token_file: str | None) -> str | None:
    """The ModelScope token: ``token_file`` (must be 0600 or stricter) or MODELSCOPE_API_TOKEN."""
    if token_file:
        st = os.stat(token_file)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise BadInput(f"token file {token_file} is readable by others (mode {oct(stat.S_IMODE(st.st_mode))}): chmod 600")
        return Path(token_file).read_text().strip() or None
    return os.environ.get("MODELSCOPE_API_TOKEN") or None


class _Session:
    """A token as the client's login cookie, in a private credentials folder that lives for one command."""

    def __init__(self, token: str | None):
        self.token, self.dir, self.jar = token, None, None

    def __enter__(self):
        if self.token:
            import pickle

            from requests.cookies import RequestsCookieJar, create_cookie

            self.dir = tempfile.mkdtemp(prefix="ms-cred-")
            os.chmod(self.dir, 0o700)
            self.jar = RequestsCookieJar()
            self.jar.set_cookie(create_cookie("m_session_id", self.token))
            with open(os.path.join(self.dir, "cookies"), "wb") as f:
                pickle.dump(self.jar, f)
            # read by modelscope when it is first imported (below, in resolve/fetch)
            os.environ["MODELSCOPE_CREDENTIALS_PATH"] = self.dir
        return self

    def __exit__(self, *exc):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def resolve(model_id: str, revision: str, allow, ignore, jar=None) -> dict:
    from modelscope.hub.api import HubApi

    api = HubApi()
    try:
        endpoint = api.get_endpoint_for_read(repo_id=model_id, repo_type="model")
    except Exception as e:  # noqa: BLE001 - the client raises HTTPError / Exception
        raise FetchError(f"model {model_id} not found on {os.environ.get('MODELSCOPE_DOMAIN') or 'modelscope.cn'}: {e}") from None
    try:
        branches, tags = api.get_model_branches_and_tags_details(model_id, use_cookies=jar or False, endpoint=endpoint)
        detail = api.get_valid_revision_detail(model_id, revision=revision, cookies=jar, endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - NotExistError, RequestError, HTTPError
        known = [x["Revision"] for x in (tags or [])] if "tags" in dir() else []
        raise FetchError(f"model {model_id} has no revision {revision!r}: {e}"
                         + (f" (tags: {', '.join(known)})" if known else "")) from None
    files = api.get_model_files(model_id, revision=detail["Revision"], recursive=True,
                                use_cookies=jar or False, endpoint=endpoint)
    chosen = select(files, allow, ignore)
    if not chosen:
        raise FetchError(f"model {model_id} at {revision!r}: no files match allow={allow} ignore={ignore}")
    return {
        "model_id": model_id, "revision": revision, "endpoint": endpoint,
        "is_branch": revision in [b["Revision"] for b in branches or []],
        "commit": detail.get("CommitId") or (files[0].get("Revision") if files else None),
        "files": chosen, "size": sum(e["size"] for e in chosen),
    }


def fetch(model_id: str, revision: str, local_dir: Path, allow, ignore, jar=None) -> dict:
    from modelscope import snapshot_download

    manifest = resolve(model_id, revision, allow, ignore, jar)
    local_dir.mkdir(parents=True, exist_ok=True)
    stamp = local_dir / CACHE_STAMP
    want = {"files": manifest["files"], "stat": _stat_signature(local_dir, manifest)}
    try:
        if json.loads(stamp.read_text()) == want:  # verified earlier and untouched since: no hashing, no download
            return manifest
    except (OSError, ValueError):
        pass
    stamp.unlink(missing_ok=True)
    for attempt in range(2):
        snapshot_download(model_id, revision=revision, local_dir=str(local_dir), cookies=jar,
                          allow_patterns=allow or None, ignore_patterns=ignore or None, max_workers=4)
        problems = verify(local_dir, manifest)
        if not problems or attempt:
            break
        # a file changed after the client cached it (the client trusts its index for local_dir):
        # drop those files from its index (its own API) so that the second pass fetches only them
        from modelscope.hub.utils.caching import ModelFileSystemCache

        bad = {p.split(" ", 1)[1].split(":")[0] for p in problems}
        cache = ModelFileSystemCache(str(local_dir))
        for key in list(cache.cached_files):
            if key.get("Path") in bad:
                cache.remove_key(key)
        for path in bad:
            (local_dir / path).unlink(missing_ok=True)
    if problems:
        raise FetchError(f"{model_id}@{revision} in {local_dir} after download: " + "; ".join(problems[:5]))
    want["stat"] = _stat_signature(local_dir, manifest)
    stamp.write_text(json.dumps(want))
    return manifest


def _stat_signature(folder: Path, manifest: dict) -> list | None:
    """(path, size, mtime_ns) of every manifest file; None when one is missing."""
    out = []
    for e in manifest["files"]:
        try:
            st = (folder / e["path"]).stat()
        except OSError:
            return None
        out.append([e["path"], st.st_size, st.st_mtime_ns])
    return out


def install(manifest_path: Path, staging: Path, final: Path, keep: int = 2, env_dir: Path | None = None) -> dict:
    """Verify ``staging`` and rename it to ``final`` (atomic for a new revision); prune old revisions."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"manifest {manifest_path}: cannot be read as JSON ({type(e).__name__}): re-run the deploy") from None
    if staging.resolve() == final.resolve() or not staging.is_dir():
        raise BadInput(f"--staging {staging} must be an existing folder other than --final {final}")
    if keep < 1:
        raise BadInput(f"--keep {keep}: keep at least 1 revision (the one installed)")
    problems = verify(staging, manifest)
    if problems:
        raise FetchError(f"{staging}: not installed, {len(problems)} problem(s): " + "; ".join(problems[:5]))
    for name in CLIENT_LEFTOVERS:
        p = staging / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    shutil.copyfile(manifest_path, staging / MANIFEST)
    (staging / MARKER).write_text(json.dumps({"commit": manifest.get("commit"), "at": time.time()}) + "\n")
    for p in [staging, *staging.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    removed = prune(final.parent, final.name, keep, in_use(env_dir, final.parent))
    return {"installed": str(final), "files": len(manifest["files"]), "removed": removed}


def in_use(env_dir: Path | None, parent: Path) -> set[str]:
    """Names of the revision folders under ``parent`` that a server's environment file in ``env_dir`` names
    (``/etc/mineru-fleet/mineru-vllm@N.env``): what a running or restarting server loads, never pruned."""
    names: set[str] = set()
    if env_dir is None or not env_dir.is_dir():
        return names
    prefix = str(parent).rstrip("/") + "/"
    for f in env_dir.glob("*.env"):
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        start = text.find(prefix)
        while start != -1:
            rest = text[start + len(prefix):]
            name = rest.split("/", 1)[0]
            for stop in (" ", "\n", "\"", "'", "\\"):
                name = name.split(stop, 1)[0]
            if name:
                names.add(name)
            start = text.find(prefix, start + 1)
    return names


def prune(parent: Path, current: str, keep: int, protect: set[str] = frozenset()) -> list[str]:
    """Remove verified revision folders beyond the newest ``keep`` (the current one and the ``protect`` ones,
    those a server's environment names, always stay)."""
    revs = [d for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / MARKER).is_file()]
    revs.sort(key=lambda d: (d.name == current, (d / MARKER).stat().st_mtime), reverse=True)
    removed = []
    for d in revs[max(keep, 1):]:
        if d.name in protect:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("resolve", "fetch"):
        s = sub.add_parser(name)
        s.add_argument("--model-id", required=True)
        s.add_argument("--revision", required=True)
        s.add_argument("--allow", action="append", default=[])
        s.add_argument("--ignore", action="append", default=[])
        s.add_argument("--token-file")
        if name == "fetch":
            s.add_argument("--local-dir", required=True)
    s = sub.add_parser("install")
    s.add_argument("--manifest", required=True)
    s.add_argument("--staging", required=True)
    s.add_argument("--final", required=True)
    s.add_argument("--keep", type=int, default=2)
    s.add_argument("--in-use-env-dir", help="never prune a revision a *.env file in this folder names (a server's model)")
    a = ap.parse_args(argv)
    # SIGTERM/SIGHUP (systemd stop, a killed deploy) unwind like Ctrl-C: the private credentials
    # folder of _Session is removed by its __exit__ instead of being left behind
    import signal

    def _stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        if a.cmd == "install":
            out = install(Path(a.manifest), Path(a.staging), Path(a.final), a.keep,
                          Path(a.in_use_env_dir) if a.in_use_env_dir else None)
        else:
            token = read_token(a.token_file)
            with _Session(token) as sess:
                if a.cmd == "resolve":
                    out = resolve(a.model_id, a.revision, a.allow, a.ignore, sess.jar)
                else:
                    out = fetch(a.model_id, a.revision, Path(a.local_dir), a.allow, a.ignore, sess.jar)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # a token file or folder that cannot be read or written: say which, no traceback
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 3
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
