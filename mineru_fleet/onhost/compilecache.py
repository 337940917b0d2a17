#!/usr/bin/env python3
"""Compile-cache seeds on a host: what hardware a compiled cache is for, pack a server's cache, install a seed.

Standard library only; copied to hosts as ``/opt/mineru-fleet/bin/mineru-fleet-compilecache`` (the
``CompileHardware`` fact runs its text with ``python3 -c`` before anything is installed).

    python3 compilecache.py hardware                         # this host's compile hardware, JSON
    python3 compilecache.py pack --dir CLASS_DIR --out SEED  # a finished class folder -> a seed (tar.gz)
    python3 compilecache.py install --seed SEED --dir CLASS_DIR --key KEY --user mineru [--gpus 0,1]
    python3 compilecache.py prune --root CACHE/compile --keep 3 --protect KEY [--refs-in DIR ...] [--dry-run]

A server's compile caches live in ``<state_dir>/cache/<server>/compile/<class key>/`` (``vllm/``,
``inductor/``, ``triton/``, and ``class.json``: what the key was computed from). The key is computed on
the controller (``mineru_fleet/core/compileclass.py``); ``install`` checks a seed again here, with
this host's own hardware, and refuses it -- printing why, installing nothing, exit 0, so the server
compiles its own -- when the key, the key's inputs or the hardware do not match.

Example::

    $ python3 compilecache.py install --seed /var/lib/mineru-fleet/cache/.seeds/3f2a.tar.gz \\
          --dir /var/lib/mineru-fleet/cache/0/compile/3f2a... --key 3f2a... --user mineru
    compile cache: seed 3f2a... installed: 31 files, 1.2 MiB (seeded.json)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tarfile
import time

FORMAT = 1
CLASS_FILE = "class.json"
COMPLETE = ".complete"     # written by the deploy once a server of this class passed its readiness gate
SEEDED = "seeded.json"     # written by install: where the folder's files came from
#: never carried from one host to another: per-host files, locks and half-written temporaries
SKIP_NAMES = {COMPLETE, SEEDED, "locks"}
SKIP_PREFIXES = ("gpu_p2p_access_cache_for_", "tmp")
SKIP_SUFFIXES = (".lock", ".tmp")
MAX_SEED_BYTES = 64 << 30
MAX_SEED_FILES = 1_000_000
#: cpuinfo keys that name the processor (x86: vendor/family/model; arm: implementer/part)
CPU_KEYS = ("vendor_id", "cpu family", "model", "model name", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")
#: the vector extensions torch inductor's C++ backend picks between (shown in clear; all flags are in the digest)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "vsx")


# ------------------------------------------------------------------------------------------------
# what a compiled cache is for (the same rules as mineru_fleet/core/compileclass.py: a unit test keeps them equal)
# ------------------------------------------------------------------------------------------------


def _first_cpu(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def hardware() -> dict:
    """This host's compile hardware: processor, its flags (what ``-march=native`` compiles for), the CPUs this
    process may use (inductor bakes ``num_threads(N)`` into C++ kernels), OS, gcc, and each GPU."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = _first_cpu(f.read())
    except OSError:
        cpu = {}
    flags = sorted(set((cpu.get("flags") or cpu.get("Features") or "").split()))
    os_release: dict[str, str] = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                os_release[k] = v.strip('"')
    except OSError:
        pass
    gpus = []
    smi = shutil.which("nvidia-smi") and _run(["nvidia-smi", "--query-gpu=index,name,compute_cap,driver_version",
                                                "--format=csv,noheader"])
    for line in (smi or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"index": parts[0], "name": parts[1], "compute_cap": parts[2], "driver": parts[3]})
    return {
        "arch": platform.machine(),
        "cpu": {k: cpu[k] for k in CPU_KEYS if k in cpu},
        "isa": [f for f in ISA_FLAGS if f in flags],
        "flags_sha256": hashlib.sha256(" ".join(flags).encode()).hexdigest(),
        "cpus": len(os.sched_getaffinity(0)),
        "os": f"{os_release.get('ID', '?')} {os_release.get('VERSION_ID', '?')}",
        "gcc": _run(["gcc", "-dumpfullversion"]),
        "gpus": gpus,
    }


def for_server(hw: dict, gpus: list[str] | None) -> dict:
    """The part of ``hw`` a server's compiled code depends on: everything but the GPUs it does not use."""
    out = {k: v for k, v in hw.items() if k != "gpus"}
    if gpus:
        by_index = {g.get("index"): g for g in hw.get("gpus") or []}
        out["gpus"] = [{k: v for k, v in (by_index.get(i) or {"missing": i}).items() if k != "index"} for i in gpus]
    return out


def class_key(parts: dict) -> str:
    """The class key: the first 20 hex digits of the SHA-256 of the parts' canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------------
# pack / install / prune
# ------------------------------------------------------------------------------------------------


class SeedError(Exception):
    """A seed cannot be made or used; the message says why."""


def _carried(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    first = rel.split("/", 1)[0]
    return not (first in SKIP_NAMES or name in SKIP_NAMES or name.startswith(SKIP_PREFIXES) or name.endswith(SKIP_SUFFIXES))


def pack(folder: str, out: str) -> tuple[int, int]:
    """Write the finished class folder ``folder`` as a seed (tar.gz, ``class.json`` first) to ``out``, atomically.
    Returns (files, bytes)."""
    if not os.path.isfile(os.path.join(folder, COMPLETE)):
        raise SeedError(f"{folder} is not finished (no {COMPLETE}: no server of this class passed its readiness gate yet)")
    if not os.path.isfile(os.path.join(folder, CLASS_FILE)):
        raise SeedError(f"{folder} has no {CLASS_FILE}")
    tmp = f"{out}.partial"
    n = size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        tar.add(os.path.join(folder, CLASS_FILE), arcname=CLASS_FILE)
        for top, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(top, name)
                rel = os.path.relpath(path, folder)
                if rel == CLASS_FILE or not _carried(rel) or os.path.islink(path) or not os.path.isfile(path):
                    continue
                info = tar.gettarinfo(path, arcname=f"files/{rel}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                try:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                except FileNotFoundError:  # removed while we walked (a temporary)
                    continue
                n += 1
                size += info.size
    os.replace(tmp, out)
    return n, size


def _safe_member(m: tarfile.TarInfo) -> str:
    """The member's path under ``files/``; SeedError for anything but a plain file or folder inside it."""
    name = m.name
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts[:-1] or parts[0] != "files" or len(parts) < 2:
        raise SeedError(f"member {name!r} is outside the seed's files/ folder")
    if not (m.isfile() or m.isdir()):
        raise SeedError(f"member {name!r} is not a plain file or folder")
    return "/".join(parts[1:])


def read_class(tar: tarfile.TarFile) -> dict:
    first = tar.next()
    if first is None or first.name != CLASS_FILE or not first.isfile() or first.size > 1 << 20:
        raise SeedError(f"the seed does not start with {CLASS_FILE}")
    try:
        return json.loads(tar.extractfile(first).read())
    except ValueError as e:
        raise SeedError(f"{CLASS_FILE} is not JSON: {e}") from None


def check_class(meta: dict, key: str, own: dict) -> None:
    """SeedError unless the seed's class is ``key``, its key is the hash of its inputs and its hardware is ``own``."""
    parts = meta.get("parts") if isinstance(meta, dict) else None
    if not isinstance(parts, dict):
        raise SeedError(f"{CLASS_FILE} has no parts")
    if meta.get("key") != key:
        raise SeedError(f"the seed is of class {meta.get('key')!r}, this server's is {key}")
    if class_key(parts) != key:
        raise SeedError(f"the seed's {CLASS_FILE} does not hash to its key {key} (edited or corrupt)")
    theirs = parts.get("hardware")
    if theirs != own:
        diff = sorted(k for k in set(theirs or {}) | set(own) if (theirs or {}).get(k) != own.get(k))
        raise SeedError(f"the seed was compiled on other hardware ({', '.join(diff) or 'all'} differ from this host's)")


def install(seed: str, folder: str, key: str, user: str, gpus: list[str] | None) -> str:
    """Check ``seed`` against ``key`` and this host, then add its files to ``folder`` (never replacing one that is
    there). Returns what was done; SeedError when the seed is refused (nothing written)."""
    os.umask(0o077)
    own = for_server(hardware(), gpus)
    pw = pwd.getpwnam(user)
    parent = os.path.dirname(folder.rstrip("/"))
    staging = f"{parent}/.{os.path.basename(folder.rstrip('/'))}.partial-{os.getpid()}"
    digest = hashlib.sha256()
    with open(seed, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    with tarfile.open(seed, "r:gz") as tar:
        meta = read_class(tar)
        check_class(meta, key, own)
        members = []
        total = 0
        for m in tar.getmembers()[1:]:  # after class.json
            rel = _safe_member(m)
            total += m.size
            members.append((m, rel))
            if total > MAX_SEED_BYTES or len(members) > MAX_SEED_FILES:
                raise SeedError(f"the seed is larger than {MAX_SEED_BYTES >> 30} GiB or {MAX_SEED_FILES} files")
        if not os.path.isdir(parent):  # <cache>/<server>/compile: the deploy made it, a hand-run install may not have
            os.makedirs(parent, 0o700)
            os.chown(parent, pw.pw_uid, pw.pw_gid)
        shutil.rmtree(staging, ignore_errors=True)
        os.mkdir(staging, 0o700)
        try:
            n = 0
            for m, rel in members:
                dest = os.path.join(staging, rel)
                if m.isdir():
                    os.makedirs(dest, 0o700, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), 0o700, exist_ok=True)
                src = tar.extractfile(m)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 | (m.mode & 0o100))
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.utime(dest, (m.mtime, m.mtime))
                n += 1
            with open(os.path.join(staging, SEEDED), "w") as f:
                json.dump({"seed_sha256": digest.hexdigest(), "key": key, "files": n, "bytes": total,
                           "installed": int(time.time())}, f)
            for top, dirs, names in os.walk(staging):
                for name in dirs + names:
                    os.lchown(os.path.join(top, name), pw.pw_uid, pw.pw_gid)
            os.chown(staging, pw.pw_uid, pw.pw_gid)
            if not os.path.exists(folder):
                os.rename(staging, folder)
                return f"seed {key} installed: {n} files, {total / (1 << 20):.1f} MiB"
            added = _merge(staging, folder)
            return f"seed {key} merged into the existing folder: {added} of {n} files added (none replaced)"
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _merge(src: str, dst: str) -> int:
    """Move every file of ``src`` that ``dst`` lacks into ``dst`` (inductor's and vLLM's entries are named by content
    keys, so a file present in both is the same entry: the one there wins)."""
    added = 0
    for top, dirs, names in os.walk(src):
        rel = os.path.relpath(top, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        if not os.path.isdir(target):
            st = os.stat(top)
            os.mkdir(target, 0o700)
            os.chown(target, st.st_uid, st.st_gid)
        for name in names:
            if name == SEEDED and os.path.exists(os.path.join(dst, COMPLETE)):
                continue
            path = os.path.join(target, name)
            if not os.path.exists(path):
                os.rename(os.path.join(top, name), path)
                added += name != SEEDED
    return added


def prune(root: str, keep: int, protect: set[str], refs_in: list[str], dry_run: bool = False) -> list[str]:
    """Remove class folders under ``root`` beyond the ``keep`` most recently used, never one in ``protect`` or named
    by a file under ``refs_in`` (the env files of the servers and of their deployment records), and the staging
    folders an interrupted install left. Returns what was (``dry_run``: would be) removed."""
    referenced = set(protect)
    for d in refs_in:
        for top, _dirs, names in os.walk(d):
            for name in names:
                if name.endswith(".env"):
                    try:
                        with open(os.path.join(top, name), errors="replace") as f:
                            text = f.read()
                    except OSError:
                        continue
                    referenced.update(seg.split("/", 1)[0] for seg in text.split("/compile/")[1:])
    try:
        entries = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    removed = []
    classes = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.stat().st_mtime, reverse=True)
    for i, e in enumerate(classes):
        if i >= keep and e.name not in referenced:
            removed.append(e.name)
    removed += [e.name for e in entries if e.name.startswith(".") and ".partial-" in e.name]
    if not dry_run:
        for name in removed:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return removed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="mineru-fleet-compilecache", description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("hardware")
    p = sub.add_parser("pack")
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    i = sub.add_parser("install")
    i.add_argument("--seed", required=True)
    i.add_argument("--dir", required=True)
    i.add_argument("--key", required=True)
    i.add_argument("--user", required=True)
    i.add_argument("--gpus", default="")
    r = sub.add_parser("prune")
    r.add_argument("--root", required=True)
    r.add_argument("--keep", type=int, default=3)
    r.add_argument("--protect", action="append", default=[])
    r.add_argument("--refs-in", action="append", default=[])
    r.add_argument("--dry-run", action="store_true", help="print what would be removed (one '@prune NAME' a line)")
    a = ap.parse_args(argv)
    if a.cmd == "hardware":
        print(json.dumps(hardware(), sort_keys=True))
        return 0
    if a.cmd == "pack":
        try:
            n, size = pack(a.dir, a.out)
        except SeedError as e:
            print(f"error: compile cache: {e}", file=sys.stderr)
            return 1
        print(f"compile cache: packed {n} files ({size / (1 << 20):.1f} MiB) of {a.dir} into {a.out}")
        return 0
    if a.cmd == "install":
        try:
            print(f"compile cache: {install(a.seed, a.dir, a.key, a.user, [g for g in a.gpus.split(',') if g])}")
        except (SeedError, tarfile.TarError, OSError, EOFError) as e:
            # refused: nothing of it is used, the server compiles its own (the deploy goes on); said in the journal too
            msg = f"compile cache: seed refused for {a.dir}, the server compiles its own cache: {e}"
            print(msg)
            if shutil.which("logger"):
                _run(["logger", "-t", "mineru-fleet-compilecache", "-p", "user.warning", "--", msg])
        return 0
    removed = prune(a.root, a.keep, set(a.protect), a.refs_in, a.dry_run)
    if a.dry_run:
        print("".join(f"@prune {name}\n" for name in removed), end="")
        return 0
    print(f"compile cache: removed {len(removed)} old class folder(s): {' '.join(removed) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
