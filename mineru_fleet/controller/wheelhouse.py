"""Controller-side wheelhouse: every wheel of a lock, downloaded once, hash-verified.

    uv run python -m mineru_fleet.controller.wheelhouse cpu            # -> .sandbox/serve/wheels/cpu/
    uv run python -m mineru_fleet.controller.wheelhouse cuda --dest /srv/wheels/cuda
    uv run python -m mineru_fleet.controller.wheelhouse cpu --release-id

The folder holds only ``*.whl`` files (no partial downloads: pip writes them whole, local wheels
are renamed into place), so it can be served as-is as a ``--find-links`` directory listing.
Hosts then install with::

    uv pip sync --no-index --find-links URL_OR_DIR locks/<profile>.txt

Wheels are fetched with ``pip download --no-deps --only-binary=:all:`` for the lock's target
(``--python-version``, ``--platform``, ``--implementation cp``), one package per pip process, a few
in parallel, so an interrupted run keeps what finished. A wheel already present whose SHA-256 is
one of the lock's hashes for that pin is not downloaded again. Every wheel the lock needs is
verified against the lock's hashes at the end of each run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mineru_fleet.paths import REPO
from mineru_fleet.controller.locks import (
    DEFAULT_INDEX_URL,
    PROFILES,
    Pin,
    build_local_wheel,
    lock_digest,
    lock_path,
    normalize_name,
    parse_lock,
    sha256_file,
)

DEFAULT_ROOT = REPO / ".sandbox" / "serve" / "wheels"
RELEASES_DIR = "/opt/mineru-fleet/releases"


def default_dest(profile: str) -> Path:
    return DEFAULT_ROOT / profile


def release_id(profile: str, lock: Path | None = None) -> str:
    """``<profile>-<first 12 hex of the lock's content digest>``: names /opt/mineru-fleet/releases/<id>/.

    The digest covers the pins and their hashes only (see :func:`mineru_fleet.locks.lock_digest`),
    so regenerating a lock that resolves to the same set keeps the id.
    """
    return f"{profile}-{lock_digest(lock or lock_path(profile))[:12]}"


def release_venv(profile: str, lock: Path | None = None) -> str:
    return f"{RELEASES_DIR}/{release_id(profile, lock)}/venv"


class WheelhouseError(RuntimeError):
    pass


@dataclasses.dataclass
class WheelhouseReport:
    profile: str
    dest: Path
    release_id: str
    wheels: int = 0  # wheels the lock needs, all present and verified at the end
    total_bytes: int = 0  # their size
    downloaded: int = 0
    downloaded_bytes: int = 0
    built: int = 0  # local (metadata-only) wheels built
    skipped: int = 0  # already present and verified
    pruned: int = 0  # unused wheels deleted (prune=True)
    seconds: float = 0.0
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # pin name -> wheel filename

    def summary(self) -> str:
        mb = self.downloaded_bytes / 1e6
        rate = f", {mb / self.seconds:.1f} MB/s" if self.downloaded and self.seconds else ""
        return (
            f"{self.profile}: {self.wheels} wheels, {self.total_bytes / 1e9:.2f} GB in {self.dest} "
            f"(downloaded {self.downloaded} = {mb:.1f} MB, built {self.built}, kept {self.skipped}) "
            f"in {self.seconds:.1f}s{rate}; release {self.release_id}"
        )


_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def _wheel_key(filename: str) -> tuple[str, str] | None:
    m = _WHEEL_RE.match(filename)
    if not m:
        return None
    return normalize_name(m.group("name")), _norm_version(m.group("version"))


def _norm_version(v: str) -> str:
    try:
        from packaging.version import Version

        return str(Version(v))
    except (ImportError, ValueError):  # pragma: no cover - packaging is a pyinfra dependency
        return v.lower()


def _find_present(dest: Path, pins: dict[str, Pin], cache: dict | None = None) -> dict[str, Path]:
    """Wheels in dest that belong to a pin and match one of its hashes (cache: (name, size, mtime) -> sha256)."""
    cache = {} if cache is None else cache
    found: dict[str, Path] = {}
    for f in sorted(dest.glob("*.whl")):
        key = _wheel_key(f.name)
        if not key:
            continue
        pin = pins.get(key[0])
        if pin is None or _norm_version(pin.version) != key[1] or key[0] in found:
            continue
        st = f.stat()
        ck = (f.name, st.st_size, st.st_mtime_ns)
        if ck not in cache:
            cache[ck] = sha256_file(f)
        if not pin.hashes or cache[ck] in pin.hashes:
            found[key[0]] = f
    return found


def _pip_download(pin: Pin, dest: Path, profile_name: str, index_url: str, python: str) -> subprocess.CompletedProcess:
    profile = PROFILES[profile_name]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix=f"req-{pin.name}-") as req:
        req.write(pin.requirement + "".join(f" --hash=sha256:{h}" for h in pin.hashes) + "\n")
        req.flush()
        cmd = [
            python, "-m", "pip", "download",
            "--isolated",  # ignore pip.conf / PIP_* (find-links, constraints, extra indexes of this machine)
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-q",
            "--no-deps", "--only-binary=:all:",
            "--python-version", profile.pip_python_version,
            *[a for plat in profile.pip_platforms for a in ("--platform", plat)],
            "--implementation", profile.implementation,
            "--index-url", index_url,
            "--timeout", "180", "--retries", "5",
            "--dest", str(dest),
            "-r", req.name,
        ]
        cert = os.environ.get("PIP_CERT")  # --isolated drops PIP_CERT; keep a configured CA bundle
        if cert:
            cmd += ["--cert", cert]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)


def ensure_wheelhouse(
    profile: str,
    dest: Path | str | None = None,
    *,
    lock: Path | None = None,
    index_url: str = DEFAULT_INDEX_URL,
    jobs: int = 4,
    prune: bool = False,
    python: str = sys.executable,
    log=print,
) -> WheelhouseReport:
    """Make ``dest`` (default ``.sandbox/serve/wheels/<profile>/``) hold every wheel of the lock.

    Idempotent: present wheels with a matching hash are kept; missing ones are downloaded (or, for
    the lock's local metadata-only wheels, built). Raises :class:`WheelhouseError` when a wheel
    cannot be fetched or does not match the lock's hashes. ``prune=True`` deletes the ``*.whl``
    files the lock does not use (off by default: hosts still on an older release may need them).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    lock = Path(lock) if lock else lock_path(profile)
    dest = Path(dest) if dest else default_dest(profile)
    dest.mkdir(parents=True, exist_ok=True)
    pins = parse_lock(lock)
    report = WheelhouseReport(profile, dest, release_id(profile, lock))
    t0 = time.monotonic()

    hashes: dict = {}
    present = _find_present(dest, pins, hashes)
    report.skipped = len(present)
    local = {normalize_name(w.name): w for w in PROFILES[profile].local_wheels}
    missing = [p for n, p in sorted(pins.items()) if n not in present]

    for pin in [p for p in missing if p.name in local]:
        path = build_local_wheel(local[pin.name], dest)
        if pin.hashes and sha256_file(path) not in pin.hashes:
            raise WheelhouseError(f"built {path.name} but its sha256 is not in the lock: regenerate the lock")
        report.built += 1
        log(f"built {path.name}")
    remote = [p for p in missing if p.name not in local]
    if remote:
        log(f"{profile}: downloading {len(remote)} wheels into {dest} ({jobs} at a time)")
    failures: list[str] = []
    before = {f.name: f.stat().st_size for f in dest.glob("*.whl")}
    with cf.ThreadPoolExecutor(max(1, jobs)) as ex:
        futs = {ex.submit(_pip_download, p, dest, profile, index_url, python): p for p in remote}
        for i, fut in enumerate(cf.as_completed(futs), 1):
            pin = futs[fut]
            proc = fut.result()
            if proc.returncode != 0:
                failures.append(f"{pin.requirement}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
                log(f"  [{i}/{len(remote)}] FAILED {pin.requirement}")
            else:
                log(f"  [{i}/{len(remote)}] {pin.requirement}")
    if failures:
        raise WheelhouseError("pip download failed for:\n" + "\n".join(failures))

    # verify everything the lock needs (downloads are hash-checked by pip already; this also
    # catches a wheel that pip picked for another compatible tag and any manual tampering)
    final = _find_present(dest, pins, hashes)
    absent = sorted(set(pins) - set(final))
    if absent:
        raise WheelhouseError(f"no wheel with a matching hash for: {', '.join(absent)}")
    report.wheels = len(final)
    report.files = {n: p.name for n, p in sorted(final.items())}
    report.total_bytes = sum(p.stat().st_size for p in final.values())
    new = [p for p in final.values() if p.name not in before]
    report.downloaded = len([p for p in new if p.name not in {local[n].filename for n in local}])
    report.downloaded_bytes = sum(
        p.stat().st_size for p in new if p.name not in {local[n].filename for n in local}
    )
    if prune:
        keep = {p.name for p in final.values()}
        for f in dest.glob("*.whl"):
            if f.name not in keep:
                log(f"pruned {f.name}")
                f.unlink()
                report.pruned += 1
    report.seconds = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mineru_fleet.controller.wheelhouse", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", choices=sorted(PROFILES))
    ap.add_argument("--dest", type=Path, help="default: .sandbox/serve/wheels/<profile>/")
    ap.add_argument("--lock", type=Path, help="default: locks/<profile>.txt")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--prune", action="store_true", help="delete wheels the lock does not use")
    ap.add_argument("--index-url", default=os.environ.get("MINERU_FLEET_INDEX_URL", DEFAULT_INDEX_URL))
    ap.add_argument("--release-id", action="store_true", help="print the release id of the lock and exit")
    args = ap.parse_args(argv)
    if args.release_id:
        print(release_id(args.profile, args.lock))
        return 0
    try:
        report = ensure_wheelhouse(args.profile, args.dest, lock=args.lock, index_url=args.index_url, jobs=args.jobs,
                                   prune=args.prune)
    except WheelhouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
