"""A facts folder: one file per preflight command, the format of examples/hosts/.

A user can gather a host's facts once (``mineru-fleet plan --host ... --save DIR``), send the
folder, and anyone can plan from it offline (``mineru-fleet plan --facts DIR``).

Example::

    >>> files = read_facts_dir(Path("fixtures/hosts/h100-1x"))  # doctest: +SKIP
    >>> sorted(files)[:2]  # doctest: +SKIP
    ['driver-cuda.txt', 'extra.txt']
"""

from __future__ import annotations

from pathlib import Path

from mineru_fleet.core.hostfacts import COMMANDS, HostFacts, build_host_facts

KNOWN_FILES = (*COMMANDS, "extra.txt", "nvidia-smi-error.txt", "query-gpu-header.csv", "nccl.txt")


def read_facts_dir(path: Path) -> dict[str, str]:
    """{file name: text} of the known files present in ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such facts folder")
    files = {}
    for name in KNOWN_FILES:
        f = path / name
        if f.is_file():
            files[name] = f.read_text(errors="replace")
    return files


def write_facts_dir(path: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``path`` (created if needed); stale known files are removed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in KNOWN_FILES:
        f = path / name
        if name in files:
            f.write_text(files[name])
        elif f.exists():
            f.unlink()


def load_host_facts(path: Path, host: str | None = None) -> HostFacts:
    """Parse a facts folder; the host is named after the folder unless given."""
    path = Path(path)
    return build_host_facts(host or path.resolve().name, read_facts_dir(path))
