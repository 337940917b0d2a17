"""The MinerU *client* on the controller: proves that a deployed server really parses a PDF.

    python -m mineru_fleet.sandbox.client http://192.168.250.6:30000            # makes a sample PDF
    python -m mineru_fleet.sandbox.client http://HOST:30000 some.pdf --out /tmp/out

What it does:

* :func:`ensure_client_venv` makes ``.sandbox/client/`` (a venv made by ``uv venv`` from a Python
  already on this machine: never a uv-managed download) and installs ``mineru==2.5.4`` with **no
  extras** - the ``vlm-http-client`` backend needs none: ``mineru.cli.client`` skips every torch
  call when the backend ends in ``-client``, and the HTTP client itself is ``mineru_vl_utils``, a
  base dependency. Resolution uses ``--exclude-newer 2025-10-01`` (newer transformers /
  mineru-vl-utils break things). MinerU depends on the GUI build ``opencv-python``, which needs
  libGL and glib from the OS; we drop it with ``uv pip install --excludes`` and install
  ``opencv-python-headless`` (the same ``cv2`` module, same releases, no GUI libraries) instead,
  so no apt package is needed. ``opencv="full"`` keeps the GUI build and then makes sure the OS
  libraries (``libgl1``, ``libglib2.0-0`` / ``libglib2.0-0t64``) are installed (apt, as root).
  Whatever the choice, ``import cv2`` is probed after the install; a missing shared library found
  there is mapped to its Debian package and installed the same way.
  A marker file records the requirement set: a rerun with the same set returns at once.
* :func:`run_client` runs ``mineru -p PDF -o OUT -b vlm-http-client -u URL`` in a clean
  environment (nothing inherited but PATH basics; hubs offline; caches and HOME inside the venv).
* :func:`output_files` lists what it wrote; :func:`check_outputs` asserts the files that matter
  (``<stem>.md``, ``<stem>_middle.json``, ``<stem>_content_list.json``, ``<stem>_model.json``,
  ``<stem>_layout.pdf``, ``<stem>_origin.pdf``) are there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mineru_fleet.paths import REPO

__all__ = [
    "CLIENT_EXCLUDE_NEWER",
    "DEFAULT_DEST",
    "MINERU_VERSION",
    "ClientOSLibsError",
    "ClientVenvError",
    "check_outputs",
    "client_env",
    "client_requirements",
    "ensure_client_venv",
    "ensure_os_packages",
    "main",
    "output_files",
    "run_client",
    "server_models",
]

DEFAULT_DEST = REPO / ".sandbox" / "client"
MINERU_VERSION = "2.5.4"
CLIENT_EXCLUDE_NEWER = "2025-10-01"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
MARKER_NAME = ".mineru-fleet-client.json"
HEADLESS_SAME_AS_FULL = "opencv-python-headless==<opencv-python's resolved version>"

# The GUI OpenCV needs these from the OS (alternatives: Debian 13 renamed glib for time64).
GUI_OPENCV_PACKAGES: tuple[tuple[str, ...], ...] = (("libgl1",), ("libglib2.0-0t64", "libglib2.0-0"))
# A shared library missing at ``import cv2`` -> the Debian packages that provide it.
SONAME_PACKAGES: dict[str, tuple[str, ...]] = {
    "libGL.so.1": ("libgl1",),
    "libEGL.so.1": ("libegl1",),
    "libgthread-2.0.so.0": ("libglib2.0-0t64", "libglib2.0-0"),
    "libglib-2.0.so.0": ("libglib2.0-0t64", "libglib2.0-0"),
    "libSM.so.6": ("libsm6",),
    "libICE.so.6": ("libice6",),
    "libXext.so.6": ("libxext6",),
    "libXrender.so.1": ("libxrender1",),
    "libX11.so.6": ("libx11-6",),
    "libxcb.so.1": ("libxcb1",),
}


class ClientVenvError(RuntimeError):
    """The client venv could not be made (uv, Python, resolution, install or the import probe)."""


class ClientOSLibsError(RuntimeError):
    """OS libraries the client needs are missing and could not be installed."""


# --------------------------------------------------------------------------- requirements

def client_requirements(opencv: str = "headless") -> tuple[list[str], list[str]]:
    """``(requirements, excludes)`` for the client venv.

    ``opencv="headless"`` (default): exclude ``opencv-python`` (MinerU's dependency) and ask for
    ``opencv-python-headless`` at the release that MinerU's own resolution picks for
    ``opencv-python`` (the placeholder ``{HEADLESS_SAME_AS_FULL}`` is filled in by
    :func:`ensure_client_venv` from a ``uv pip compile`` of ``mineru==2.5.4`` with the same cutoff:
    4.11.0.86 for 2025-10-01). ``opencv="full"``: MinerU as published.
    """
    if opencv == "headless":
        return [f"mineru=={MINERU_VERSION}", HEADLESS_SAME_AS_FULL], ["opencv-python"]
    if opencv == "full":
        return [f"mineru=={MINERU_VERSION}"], []
    raise ValueError(f"opencv must be 'headless' or 'full', not {opencv!r}")


def _find_uv(uv: str | None = None) -> str:
    cands = [uv, os.environ.get("UV"), shutil.which("uv"), str(REPO / ".venv" / "bin" / "uv"),
             str(Path(sys.executable).parent / "uv")]
    for cand in cands:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise ClientVenvError("uv binary not found (put uv on PATH, set UV=/path/to/uv, or run via `uv run`)")


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def _find_python(python: str | None = None) -> tuple[str, tuple[int, int]]:
    """A Python already on this machine that MinerU 2.5.4 supports (3.10-3.13).

    The distribution's own interpreter comes first (stable path; no pyenv shim in between).
    """
    if python:
        cands = [python]
    else:
        cands = ["/usr/bin/python3.11", "/usr/bin/python3", shutil.which("python3.11"),
                 shutil.which("python3"), sys.executable]
    tried = []
    for cand in cands:
        if not cand or not os.path.exists(cand):
            continue
        ver = _python_version(cand)
        tried.append(f"{cand} -> {ver}")
        if ver and (3, 10) <= ver <= (3, 13):
            return os.path.realpath(cand), ver
    raise ClientVenvError("no usable Python 3.10-3.13 found for the client venv; tried: " + "; ".join(tried))


# --------------------------------------------------------------------------- OS packages

def _soname_present(soname: str) -> bool:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], check=False, capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return False
    return any(line.strip().startswith(soname + " ") for line in out.splitlines())


def _dpkg_installed(pkg: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip().endswith(" installed")


def _apt_candidate(pkg: str) -> bool:
    out = subprocess.run(["apt-cache", "policy", pkg], check=False, capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", out.stdout)
    return bool(m) and m.group(1) != "(none)"


def ensure_os_packages(wanted: tuple[tuple[str, ...], ...] | list[tuple[str, ...]], *, log=print) -> list[str]:
    """Make sure one package of each alternative group is installed (Debian/apt).

    Returns the packages it installed (empty when all were there). Installs with
    ``apt-get update`` then ``apt-get install -y --no-install-recommends``, only when something
    is missing; raises :class:`ClientOSLibsError` with the command to run when it cannot.
    """
    missing = [group for group in wanted if not any(_dpkg_installed(p) for p in group)]
    if not missing:
        return []
    names = " | ".join("/".join(g) for g in missing)
    if not shutil.which("apt-get"):
        raise ClientOSLibsError(f"OS packages missing ({names}) and there is no apt-get: install them by hand")
    if os.geteuid() != 0:
        raise ClientOSLibsError(
            f"OS packages missing ({names}); as root run: apt-get update && "
            f"apt-get install -y --no-install-recommends {' '.join(g[-1] for g in missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"client: installing OS packages for {names} (apt-get update + install)")
    upd = subprocess.run(["apt-get", "update"], check=False, capture_output=True, text=True, env=env)
    if upd.returncode != 0:
        raise ClientOSLibsError(f"apt-get update failed (rc {upd.returncode}):\n{upd.stderr[-2000:]}")
    pkgs = []
    for group in missing:
        pick = next((p for p in group if _apt_candidate(p)), None)
        if pick is None:
            raise ClientOSLibsError(f"none of {group} is installable from the configured apt sources")
        pkgs.append(pick)
    inst = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *pkgs],
                          check=False, capture_output=True, text=True, env=env)
    if inst.returncode != 0:
        raise ClientOSLibsError(f"apt-get install {' '.join(pkgs)} failed (rc {inst.returncode}):\n"
                                f"{inst.stderr[-2000:]}")
    return pkgs


# --------------------------------------------------------------------------- the venv

_PROBE = (
    "import cv2, mineru_vl_utils, mineru.cli.client, mineru.version as v; "
    "from importlib.metadata import version as V; "
    "print(v.__version__, cv2.__version__, V('mineru-vl-utils'))"
)


def _probe(python: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", _PROBE], check=False, capture_output=True, text=True, timeout=300,
                          env=client_env(python.parent.parent))


def _missing_sonames(stderr: str) -> list[str]:
    return sorted(set(re.findall(r"(lib[\w.+-]+\.so(?:\.\d+)*): cannot open shared object file", stderr)))


def _du_bytes(path: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _resolved_version(uv_bin: str, python: Path, reqs: list[str], package: str, index_url: str,
                      exclude_newer: str, env: dict[str, str], tmp: Path) -> str:
    """The version of ``package`` that ``uv pip compile`` picks for ``reqs`` (same index and cutoff)."""
    src = tmp / "resolve.in"
    src.write_text("\n".join(reqs) + "\n")
    r = subprocess.run([uv_bin, "pip", "compile", "--python", str(python), "--index-url", index_url,
                        "--exclude-newer", exclude_newer, "--no-header", "--no-annotate", str(src)],
                       check=False, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise ClientVenvError(f"uv pip compile failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    m = re.search(rf"^{re.escape(package)}==(\S+)", r.stdout, re.MULTILINE | re.IGNORECASE)
    if not m:
        raise ClientVenvError(f"{package} is not in the resolution of {reqs}")
    return m.group(1)


def _interpreter_exists(script: Path) -> bool:
    """The script's ``#!`` interpreter is there (a venv moved to another folder keeps the old path)."""
    first = script.read_bytes()[:512].split(b"\n", 1)[0]
    return not first.startswith(b"#!") or Path(first[2:].decode(errors="replace").split()[0]).exists()


def ensure_client_venv(
    dest: Path = DEFAULT_DEST,
    *,
    opencv: str = "headless",
    python: str | None = None,
    uv: str | None = None,
    index_url: str = DEFAULT_INDEX_URL,
    exclude_newer: str = CLIENT_EXCLUDE_NEWER,
    force: bool = False,
    log=print,
) -> Path:
    """Make (or reuse) the MinerU client venv at ``dest``; return the path of its ``mineru``.

    Idempotent: a marker file (``dest/.mineru-fleet-client.json``) holds the requirement set,
    excludes, date cutoff, index and Python version; when it matches and ``bin/mineru`` exists
    the call returns without running anything but a quick ``import`` check of the OS libraries
    for ``opencv="full"``. A changed set rebuilds the venv from scratch (``uv venv --clear``);
    ``dest`` must then be a venv or absent - anything else is refused, never deleted.
    """
    dest = Path(dest).absolute()
    reqs, excludes = client_requirements(opencv)
    mineru = dest / "bin" / "mineru"
    marker = dest / MARKER_NAME
    if opencv == "full":
        ensure_os_packages(GUI_OPENCV_PACKAGES, log=log)

    wanted_base = {"requirements": reqs, "excludes": excludes, "exclude_newer": exclude_newer,
                   "index_url": index_url, "opencv": opencv}
    if not force and marker.is_file() and mineru.is_file() and _interpreter_exists(mineru):
        try:
            have = json.loads(marker.read_text())
        except (OSError, ValueError):
            have = {}
        if {k: have.get(k) for k in wanted_base} == wanted_base:
            return mineru

    py, pyver = _find_python(python)
    uv_bin = _find_uv(uv)
    if dest.exists() and not (dest / "pyvenv.cfg").is_file() and any(dest.iterdir()):
        raise ClientVenvError(f"{dest} exists and is not a venv: refusing to replace it")
    # hermetic uv: no config files, no inherited index/proxy settings, never download a Python
    uv_env = {k: v for k, v in os.environ.items()
              if k == "UV_CACHE_DIR" or not k.startswith(("UV_", "PIP_"))}
    uv_env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1")
    t0 = time.monotonic()
    log(f"client: making venv {dest} with {py} ({pyver[0]}.{pyver[1]})")
    marker.unlink(missing_ok=True)
    r = subprocess.run([uv_bin, "venv", "--clear", "--no-python-downloads", "--python", py, str(dest)],
                       check=False, capture_output=True, text=True, env=uv_env)
    if r.returncode != 0:
        raise ClientVenvError(f"uv venv failed (rc {r.returncode}):\n{r.stderr[-3000:]}")

    with tempfile.TemporaryDirectory(prefix="mineru-client-") as tmp:
        if HEADLESS_SAME_AS_FULL in reqs:
            full_reqs, _ = client_requirements("full")
            pin = _resolved_version(uv_bin, dest / "bin" / "python", full_reqs, "opencv-python",
                                    index_url, exclude_newer, uv_env, Path(tmp))
            reqs = [f"opencv-python-headless=={pin}" if r == HEADLESS_SAME_AS_FULL else r for r in reqs]
        req_file = Path(tmp) / "requirements.in"
        req_file.write_text("\n".join(reqs) + "\n")
        cmd = [uv_bin, "pip", "install", "--python", str(dest / "bin" / "python"),
               "--index-url", index_url, "--exclude-newer", exclude_newer, "-r", str(req_file)]
        if excludes:
            exc_file = Path(tmp) / "excludes.txt"
            exc_file.write_text("\n".join(excludes) + "\n")
            cmd += ["--excludes", str(exc_file)]
        log(f"client: installing {' '.join(reqs)}"
            + (f" (excluding {', '.join(excludes)})" if excludes else "")
            + f", --exclude-newer {exclude_newer}")
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=uv_env)
    if r.returncode != 0:
        raise ClientVenvError(f"uv pip install failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
    if not mineru.is_file():
        raise ClientVenvError(f"install finished but {mineru} is missing")

    p = _probe(dest / "bin" / "python")
    if p.returncode != 0:
        sonames = _missing_sonames(p.stderr)
        groups = []
        for so in sonames:
            if so not in SONAME_PACKAGES:
                raise ClientOSLibsError(f"the client needs {so}, which no known Debian package maps to:\n"
                                        f"{p.stderr[-2000:]}")
            groups.append(SONAME_PACKAGES[so])
        if not groups:
            raise ClientVenvError(f"import check failed:\n{p.stderr[-3000:]}")
        ensure_os_packages(groups, log=log)
        p = _probe(dest / "bin" / "python")
        if p.returncode != 0:
            raise ClientVenvError(f"import check still fails after installing OS packages:\n{p.stderr[-3000:]}")
    versions = dict(zip(("mineru", "opencv", "mineru_vl_utils"), p.stdout.split()))

    freeze = subprocess.run([uv_bin, "pip", "freeze", "--python", str(dest / "bin" / "python")],
                            check=False, capture_output=True, text=True, env=uv_env).stdout.split()
    elapsed = time.monotonic() - t0
    size = _du_bytes(dest)
    info = dict(wanted_base, resolved_requirements=reqs, python=py, python_version=f"{pyver[0]}.{pyver[1]}",
                uv=subprocess.run([uv_bin, "--version"], check=False, capture_output=True, text=True).stdout.strip(),
                versions=versions, build_seconds=round(elapsed, 1), size_bytes=size, installed=freeze)
    tmp_marker = marker.with_suffix(".tmp")
    tmp_marker.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp_marker, marker)
    log(f"client: ready in {elapsed:.0f} s, {size / 2**20:.0f} MiB, {len(freeze)} packages, {versions}")
    return mineru


# --------------------------------------------------------------------------- running it

def client_env(venv: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for the client: nothing from the caller's but what is set here.

    Hubs off (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``MINERU_MODEL_SOURCE=local``; the
    http-client backend loads no model anyway), HOME and caches inside the venv (so MinerU never
    reads or writes the caller's ``~/mineru.json`` or caches), no proxies.
    """
    venv = Path(venv)
    home = venv / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MINERU_MODEL_SOURCE": "local",
        "NO_PROXY": "*",
        "no_proxy": "*",
    }
    if extra:
        env.update(extra)
    return env


def run_client(
    mineru: Path,
    pdf: Path,
    url: str,
    out_dir: Path,
    timeout: int = 600,
    *,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``mineru -p PDF -o OUT_DIR -b vlm-http-client -u URL``; never raises on a non-zero exit.

    stdout/stderr are captured (text). ``subprocess.TimeoutExpired`` propagates past ``timeout``
    seconds (the client is killed). ``url`` is the server root (``http://HOST:30000``): the
    client appends ``/v1/...`` itself.
    """
    mineru = Path(mineru).absolute()
    pdf = Path(pdf).absolute()
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(mineru), "-p", str(pdf), "-o", str(out_dir), "-b", "vlm-http-client", "-u", url.rstrip("/"),
           *(extra_args or [])]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=str(out_dir),
                          env=client_env(mineru.parent.parent, extra_env), stdin=subprocess.DEVNULL)


def output_files(out_dir: Path) -> list[Path]:
    """Every regular file under ``out_dir``, relative to it, sorted."""
    out_dir = Path(out_dir)
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())


def check_outputs(out_dir: Path, pdf_stem: str) -> dict[str, Path]:
    """The files MinerU 2.5.4's vlm backend writes for ``<pdf_stem>``, checked; key -> absolute path.

    Layout: ``OUT/<stem>/vlm/`` holds ``<stem>.md``, ``<stem>_middle.json``, ``<stem>_content_list.json``,
    ``<stem>_model.json``, ``<stem>_layout.pdf``, ``<stem>_origin.pdf`` (and ``images/`` when there are
    figures). With a random-weight model the ``.md`` is empty and the JSON lists are empty: only
    presence, valid JSON and one ``pdf_info`` entry per page are checked. Raises ``AssertionError``.
    """
    base = Path(out_dir).absolute() / pdf_stem / "vlm"
    files = {
        "md": base / f"{pdf_stem}.md",
        "middle": base / f"{pdf_stem}_middle.json",
        "content_list": base / f"{pdf_stem}_content_list.json",
        "model": base / f"{pdf_stem}_model.json",
        "layout_pdf": base / f"{pdf_stem}_layout.pdf",
        "origin_pdf": base / f"{pdf_stem}_origin.pdf",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        have = [str(p) for p in output_files(out_dir)]
        raise AssertionError(f"MinerU outputs missing: {missing}; found: {have}")
    parsed = {}
    for key in ("middle", "content_list", "model"):
        try:
            parsed[key] = json.loads(files[key].read_text())
        except ValueError as e:
            raise AssertionError(f"{files[key]} is not JSON: {e}") from None
    pages = parsed["middle"].get("pdf_info") if isinstance(parsed["middle"], dict) else None
    if not isinstance(pages, list) or not pages:
        raise AssertionError(f"{files['middle']} has no pdf_info pages")
    return files


def server_models(url: str, timeout: float = 5.0) -> list[str]:
    """The model ids ``URL/v1/models`` lists (the client needs exactly one). Raises ``OSError`` if down."""
    with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=timeout) as resp:
        data = json.load(resp)
    return [m.get("id", "") for m in data.get("data", [])]


# --------------------------------------------------------------------------- CLI

@dataclasses.dataclass
class _Args:
    url: str
    pdf: Path | None
    out: Path | None
    dest: Path
    opencv: str
    timeout: int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mineru_fleet.sandbox.client",
                                 description="Parse a PDF with MinerU's vlm-http-client against a server.")
    ap.add_argument("url", help="server root, e.g. http://192.168.250.6:30000")
    ap.add_argument("pdf", nargs="?", type=Path, help="PDF to parse (default: a generated one-page sample)")
    ap.add_argument("--out", type=Path, help="output folder (default: a new temporary folder, kept)")
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"client venv (default {DEFAULT_DEST})")
    ap.add_argument("--opencv", choices=("headless", "full"), default="headless")
    ap.add_argument("--timeout", type=int, default=600)
    a = _Args(**vars(ap.parse_args(argv)))

    try:
        models = server_models(a.url)
    except (OSError, ValueError) as e:
        print(f"server {a.url} does not answer /v1/models: {e}", file=sys.stderr)
        return 2
    print(f"server models: {models}")
    if len(models) != 1:
        print("warning: the MinerU client expects exactly one model", file=sys.stderr)

    t0 = time.monotonic()
    mineru = ensure_client_venv(a.dest, opencv=a.opencv)
    print(f"client venv: {mineru} ({time.monotonic() - t0:.1f} s)")

    work = Path(tempfile.mkdtemp(prefix="mineru-client-"))  # kept: the outputs are the point
    out = a.out or work / "out"
    pdf = a.pdf
    if pdf is None:
        try:
            from mineru_fleet.sandbox.samplepdf import make_sample_pdf
        except ImportError as e:
            print(f"no PDF given and mineru_fleet.sandbox.samplepdf is unavailable: {e}", file=sys.stderr)
            return 2
        pdf = make_sample_pdf(work / "sample.pdf")
        print(f"sample PDF: {pdf}")

    t0 = time.monotonic()
    try:
        r = run_client(mineru, pdf, a.url, out, a.timeout)
    except subprocess.TimeoutExpired:
        print(f"client timed out after {a.timeout} s", file=sys.stderr)
        return 124
    elapsed = time.monotonic() - t0
    print(f"exit {r.returncode} in {elapsed:.1f} s")
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
    print(f"output files under {out}:")
    for f in output_files(out):
        print(f"  {f}  ({(out / f).stat().st_size} B)")
    if r.returncode == 0:
        try:
            check_outputs(out, Path(pdf).stem)
        except (AssertionError, ValueError) as e:
            print(f"outputs incomplete: {e}", file=sys.stderr)
            return 1
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
