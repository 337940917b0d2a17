"""The controller's store of compile-cache seeds: ``<mineru_compile_cache_dir>/<class key>/seed.tar.gz``.

A seed comes from the first host of a compile class whose server passed its readiness gate
(``roles/compilecache.py`` packs it there and fetches it here); it is checked before it is kept:
a gzip tar starting with ``class.json`` whose key is the class's and the hash of its inputs. The
host that installs a seed checks it again with its own hardware (``onhost/compilecache.py install``).

Example::

    from mineru_fleet.controller import seedstore
    seedstore.seed_path(settings, key).is_file()     # a seed of this class is here
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from mineru_fleet.controller.locks import release_lock
from mineru_fleet.controller.wheelhouse import release_id
from mineru_fleet.core import compileclass
from mineru_fleet.core.planner import Plan
from mineru_fleet.core.settings import Settings
from mineru_fleet.onhost.compilecache import SeedError, class_key, read_class
from mineru_fleet.onhost.modelfetch import manifest_digest
from mineru_fleet.paths import REPO

SEED = "seed.tar.gz"


def store_dir(settings: Settings) -> Path:
    base = Path(settings.compile_cache_dir).expanduser()
    return base if base.is_absolute() else REPO / base


def seed_path(settings: Settings, key: str) -> Path:
    return store_dir(settings) / key / SEED


def incoming_path(settings: Settings, key: str, host: str) -> Path:
    """Where a seed fetched from ``host`` lands before it is checked (one file per host: parallel fetches never mix)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in host)
    return store_dir(settings) / key / f".incoming-{safe}.tar.gz"


def prepare_incoming(settings: Settings, key: str, host: str) -> None:
    """Create the class folder (0700) and remove a half-fetched file of an earlier run."""
    d = store_dir(settings) / key
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    incoming_path(settings, key, host).unlink(missing_ok=True)


def check_seed(path: Path, key: str) -> dict:
    """The seed's ``class.json`` when ``path`` is a seed of class ``key``; SeedError otherwise."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            meta = read_class(tar)
            for _ in tar:  # read to the end: a cut-short download fails here
                pass
    except (OSError, tarfile.TarError, EOFError) as e:
        raise SeedError(f"{path} is not a readable seed: {e}") from None
    parts = meta.get("parts") if isinstance(meta, dict) else None
    if meta.get("key") != key or not isinstance(parts, dict) or class_key(parts) != key:
        raise SeedError(f"{path} is not a seed of class {key}")
    return meta


def accept(settings: Settings, key: str, host: str) -> str:
    """Check the seed fetched from ``host`` and move it into place (atomically); the message says what happened."""
    incoming = incoming_path(settings, key, host)
    try:
        check_seed(incoming, key)
    except SeedError as e:
        incoming.unlink(missing_ok=True)
        return f"seed of class {key} from {host} refused: {e}"
    os.chmod(incoming, 0o600)
    os.replace(incoming, seed_path(settings, key))
    return f"seed of class {key} from {host} stored: {seed_path(settings, key)}"


def with_classes(p: Plan, settings: Settings, hardware: dict, manifest: dict) -> Plan:
    """``p`` with each server's compile class from the release its lock makes, the model's pinned revision and
    file list (``manifest``: the hub's) and the host's ``CompileHardware`` fact (``{}``: unknown, never seeded)."""
    release = release_id(p.profile, release_lock(p.profile, settings.runtime_lock))
    model = {"id": settings.model_id, "revision": settings.model_revision, "files": manifest_digest(manifest.get("files") or [])}
    classes = {sv.name: compileclass.compile_class(sv, profile=p.profile, release=release, model=model, hardware=hardware,
                                                   state_dir=settings.state_dir) for sv in p.servers}
    return compileclass.with_compile_classes(p, classes, settings.state_dir)
