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
        out and removed), then keep the newest KEEP revision folders next to F and every one a
        server's environment file names (a model-only deploy never removes what a server loads); F's marker file
        holds the verified-files record (each file's size, mtime, ctime, inode and SHA-256)
    record  --manifest M --final F
        check F against M, hashing only the files whose stat differs from F's record, and write
        the record again (after a file was touched without changing, or for a folder that has none)
    check   FINAL STAGING record|full MANIFEST_DIGEST
        what the model role's ModelState fact prints (see "the model check" below; the fact runs
        that part of this file with ``python3 -c``, so it works before this file is on the host)

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

MANIFEST = ".mineru-fleet-manifest.json"
CACHE_STAMP = ".mineru-fleet-cache.json"  # the controller cache: the verified manifest + each file's size and mtime
#: Folders snapshot_download(local_dir=...) leaves next to the files.
CLIENT_LEFTOVERS = ("._____temp", ".msc", ".mv", ".mdl")


# >>> the model check: the ModelState fact runs this part of the file with `python3 -c` (modelstore.check_program:
# it adds `import hashlib, json, os, stat, sys`, nothing else; so nothing here may use another name of this module)

#: the revision folder's marker: written by install once every file verified; it holds the verified-files record
MARKER = ".mineru-fleet-verified"
RECORD_VERSION = 1
#: a file whose ctime is less than this before the record was taken is "racily clean" (like git's index): a write
#: right after the record could leave size, mtime and ctime unchanged within the filesystem's timestamp granularity
RACY_NS = 1_000_000_000
#: the client's download folder, and names in a revision folder that are not model files
SKIP_TOP_DIRS = ("._____temp",)
SKIP_NAMES = (".msc", ".mv")
SKIP_PREFIX = ".mineru-fleet-"


def file_stat(st) -> list:
    """What says "this file is untouched": [size, mtime_ns, ctime_ns, inode].

    ctime is not settable from user space: a rewrite in place changes it even when the mtime is reset."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def list_files(folder) -> dict:
    """{relative path: file_stat} of the regular files of ``folder`` (no symlinks), without the client's temp folder,
    our own files and paths with a control character (no manifest path has one; they would break the line format)."""
    out = {}
    folder = str(folder)
    for root, dirs, names in os.walk(folder):
        rel = os.path.relpath(root, folder)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in SKIP_TOP_DIRS]
        for name in names:
            if name.startswith(SKIP_PREFIX) or name in SKIP_NAMES:
                continue
            path = name if rel == "." else rel + "/" + name
            if any(ord(c) < 32 or ord(c) == 127 for c in path):
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[path] = file_stat(st)
    return out


def manifest_digest(files) -> str:
    """SHA-256 of a manifest's (path, size, sha256) list: the record names the manifest it was checked against."""
    rows = sorted([e["path"], e["size"], e.get("sha256")] for e in files)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def record_entries(record) -> dict | None:
    """{path: entry} of a record, or None when it is not a record of this version (absent, hand-edited, cut short)."""
    if not isinstance(record, dict) or record.get("record") != RECORD_VERSION or not isinstance(record.get("files"), list):
        return None
    if not isinstance(record.get("checked_ns"), int) or not isinstance(record.get("manifest"), str):
        return None
    out = {}
    for e in record["files"]:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or e["path"] in out:
            return None
        if not all(isinstance(e.get(k), int) and not isinstance(e.get(k), bool)
                   for k in ("size", "mtime_ns", "ctime_ns", "inode")):
            return None
        sha = e.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            return None
        out[e["path"]] = e
    return out


def to_hash(record, listing: dict, digest: str) -> tuple:
    """Pure: which files of ``listing`` ({path: file_stat}) must be hashed, given the folder's record.

    Returns (status, paths to hash, {path: sha256} taken from the record). status: ``ok`` (the record is
    usable), ``none`` (no record), ``unreadable`` (not a record of ours), ``other-manifest`` (checked against
    another file list). Unless ``ok``, every file is hashed. With ``ok`` a file is hashed when it is not in the
    record, its [size, mtime_ns, ctime_ns, inode] differ, or it was racily clean when recorded; a recorded file
    that is gone is simply absent from both results (the caller sees it missing).
    """
    if record is None:
        return "none", sorted(listing), {}
    entries = record_entries(record)
    if entries is None:
        return "unreadable", sorted(listing), {}
    if record["manifest"] != digest:
        return "other-manifest", sorted(listing), {}
    hash_these, trusted = [], {}
    for path in sorted(listing):
        e = entries.get(path)
        if (e is None or listing[path] != [e["size"], e["mtime_ns"], e["ctime_ns"], e["inode"]]
                or e["ctime_ns"] + RACY_NS > record["checked_ns"]):
            hash_these.append(path)
        else:
            trusted[path] = e["sha256"]
    return "ok", hash_these, trusted


def read_record(folder):
    """The record in ``folder``'s marker: None when there is no marker, the parsed JSON otherwise (or a str when it
    cannot be parsed, which to_hash calls unreadable)."""
    try:
        with open(os.path.join(str(folder), MARKER), "rb") as f:
            data = f.read(64 << 20)
    except FileNotFoundError:
        return None
    except OSError:
        return "unreadable"
    try:
        return json.loads(data)
    except ValueError:
        return "unreadable"


def hash_stable(path) -> tuple:
    """(sha256, file_stat) of a file, the stat taken before and after reading; (None, None) when it changed meanwhile
    or cannot be read."""
    try:
        before = file_stat(os.lstat(path))
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        after = file_stat(os.lstat(path))
    except OSError:
        return None, None
    return (h.hexdigest(), after) if before == after else (None, None)


def check(final: str, staging: str, mode: str, digest: str, out=None) -> None:
    """The ModelState fact's output: ``@dir final``, ``@record final STATUS``, ``@stale final N``,
    ``@final SHA  ./PATH`` (hashed now or trusted from the record), ``@hashed final FILES BYTES``; the staging
    folder (no record) is hashed whole."""
    out = out or sys.stdout
    for tag, folder in (("final", final), ("staging", staging)):
        if not os.path.isdir(folder):
            continue
        out.write(f"@dir {tag}\n")
        listing = list_files(folder)
        if tag == "final":
            status, stale, trusted = to_hash(read_record(folder), listing, digest)
        else:
            status, stale, trusted = "none", sorted(listing), {}
        hash_these = sorted(listing) if mode == "full" else stale
        trusted = {} if mode == "full" else trusted
        n = size = 0
        for path in hash_these:
            sha, _ = hash_stable(os.path.join(folder, path))
            n, size = n + 1, size + listing[path][0]
            trusted[path] = sha or "changed-while-hashing"
        out.write(f"@record {tag} {status}\n@stale {tag} {len(stale)}\n")
        for path in sorted(trusted):
            out.write(f"@{tag} {trusted[path]}  ./{path}\n")
        out.write(f"@hashed {tag} {n} {size}\n")


def check_main(argv) -> int:
    if len(argv) != 4 or argv[2] not in ("record", "full"):
        sys.stderr.write("usage: check FINAL STAGING record|full MANIFEST_DIGEST\n")
        return 2
    check(*argv)
    return 0
# <<< the model check


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


def _load_manifest(manifest_path: Path) -> dict:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"manifest {manifest_path}: cannot be read as JSON ({type(e).__name__}): re-run the deploy") from None
    return check_manifest(manifest)


def _settle(listing: dict) -> None:
    """Wait until every listed file's ctime is RACY_NS old (at most that long; once per install), so that the record
    taken next vouches for every file and the next check hashes nothing."""
    wait = max((st[2] for st in listing.values()), default=0) + RACY_NS - time.time_ns()
    if wait > 0:
        time.sleep(min(wait, RACY_NS) / 1e9)


def verify_and_record(folder: Path, manifest: dict, previous=None) -> tuple[list[str], dict, int]:
    """Check ``folder`` against ``manifest`` and build its verified-files record.

    Returns (problems, record, files hashed). Every file of the folder goes into the record with its
    [size, mtime_ns, ctime_ns, inode] and SHA-256; a file the ``previous`` record vouches for (same stat) is
    not hashed again. Each stat is taken after the record's ``checked_ns`` (see RACY_NS), and a file that
    changes while it is hashed is a problem."""
    check_manifest(manifest)
    _settle(list_files(folder))
    checked_ns = time.time_ns()
    listing = list_files(folder)
    digest = manifest_digest(manifest["files"])
    _, stale, trusted = to_hash(previous, listing, digest)
    problems, shas, stats = [], dict(trusted), dict(listing)
    for path in stale:
        sha, st = hash_stable(folder / path)
        if sha is None:
            problems.append(f"changed while verifying {path}")
        else:
            shas[path], stats[path] = sha, st
    for e in manifest["files"]:
        if e["path"] not in listing:
            problems.append(f"missing {e['path']}")
        elif listing[e["path"]][0] != e["size"]:
            problems.append(f"size {e['path']}: {listing[e['path']][0]} != {e['size']}")
        elif e.get("sha256") and shas.get(e["path"]) != e["sha256"]:
            problems.append(f"sha256 {e['path']}: mismatch")
    files = [{"path": p, "size": stats[p][0], "mtime_ns": stats[p][1], "ctime_ns": stats[p][2], "inode": stats[p][3],
              "sha256": shas[p]} for p in sorted(shas)]
    return problems, {"record": RECORD_VERSION, "manifest": digest, "checked_ns": checked_ns, "files": files}, len(stale)


def _write_marker(folder: Path, data: dict) -> None:
    """The marker, replaced in one rename (a reader sees the old record or the new one, never half of one)."""
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / MARKER)


def install(manifest_path: Path, staging: Path, final: Path, keep: int = 2, env_dir: Path | None = None) -> dict:
    """Verify ``staging`` (recording what was verified) and rename it to ``final`` (atomic for a new revision);
    prune old revisions."""
    manifest = _load_manifest(manifest_path)
    if staging.resolve() == final.resolve() or not staging.is_dir():
        raise BadInput(f"--staging {staging} must be an existing folder other than --final {final}")
    if keep < 1:
        raise BadInput(f"--keep {keep}: keep at least 1 revision (the one installed)")
    # modes first: a chmod changes the ctime the record holds (files already 0644, e.g. from rsync, keep theirs)
    for p in [staging, *staging.rglob("*")]:
        want = 0o755 if p.is_dir() else 0o644
        if stat.S_IMODE(p.stat().st_mode) != want:
            os.chmod(p, want)
    problems, record, _ = verify_and_record(staging, manifest)
    if problems:
        raise FetchError(f"{staging}: not installed, {len(problems)} problem(s): " + "; ".join(problems[:5]))
    for name in CLIENT_LEFTOVERS:
        p = staging / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    shutil.copyfile(manifest_path, staging / MANIFEST)
    os.chmod(staging / MANIFEST, 0o644)
    _write_marker(staging, {"commit": manifest.get("commit"), "at": time.time(), **record})
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    removed = prune(final.parent, final.name, keep, in_use(env_dir, final.parent))
    return {"installed": str(final), "files": len(manifest["files"]), "removed": removed}


def record(manifest_path: Path, final: Path) -> dict:
    """Check the installed ``final`` folder against the manifest, hashing only what its record does not vouch for,
    and write the record again; FetchError (nothing written) when a file does not match."""
    manifest = _load_manifest(manifest_path)
    if not final.is_dir():
        raise BadInput(f"--final {final} is not a folder")
    previous = read_record(final)
    problems, rec, hashed = verify_and_record(final, manifest, previous)
    if problems:
        raise FetchError(f"{final}: not recorded, {len(problems)} problem(s): " + "; ".join(problems[:5]))
    old = previous if isinstance(previous, dict) else {}
    _write_marker(final, {"commit": old.get("commit", manifest.get("commit")), "at": old.get("at", time.time()), **rec})
    return {"recorded": str(final), "files": len(rec["files"]), "hashed": hashed}


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
    s = sub.add_parser("record")
    s.add_argument("--manifest", required=True)
    s.add_argument("--final", required=True)
    s = sub.add_parser("check")
    s.add_argument("final")
    s.add_argument("staging")
    s.add_argument("mode", choices=("record", "full"))
    s.add_argument("digest")
    a = ap.parse_args(argv)
    if a.cmd == "check":
        check(a.final, a.staging, a.mode, a.digest)
        return 0
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
        elif a.cmd == "record":
            out = record(Path(a.manifest), Path(a.final))
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
