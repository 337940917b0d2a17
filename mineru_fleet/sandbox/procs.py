"""Small process helpers: run, PIDs checked by command line, detached children, the instance lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from mineru_fleet.sandbox.config import SandboxConfig, SandboxError, log


def run(cmd: list[str], *, check: bool = True, timeout: float | None = None,
         input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; raise SandboxError with its stderr on failure."""
    log.debug("+ %s", " ".join(cmd))
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                            env=env)
    except FileNotFoundError as e:
        raise SandboxError(f"{cmd[0]}: command not found") from e
    if check and cp.returncode != 0:
        raise SandboxError(f"`{' '.join(cmd)}` failed (rc={cp.returncode}): "
                           f"{(cp.stderr or cp.stdout).strip()[-2000:]}")
    return cp


def read_pid(path: Path) -> int | None:
    """PID stored in ``path``, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pid_is(pid: int | None, marker: str) -> bool:
    """True if ``pid`` is alive and its command line contains ``marker`` (guards PID reuse)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    cl = _cmdline(pid)
    if marker.encode() not in cl:
        return False
    try:  # a zombie still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pid_exists(pid: int | None) -> bool:
    """True if ``pid`` exists and is not a zombie (whatever it runs: right after fork the
    command line is still the parent's)."""
    if not pid:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    try:
        txt = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(x) for x in txt.split()]
    except OSError:
        pass
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def leader_of(nspawn_pid: int | None) -> int | None:
    """The container's PID 1 (as a controller PID): the direct child of systemd-nspawn."""
    if not nspawn_pid:
        return None
    kids = [k for k in _children(nspawn_pid) if pid_in_other_pidns(k)]
    return kids[0] if kids else None


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    """Wait until ``pid`` (with ``marker`` in its cmdline) is gone; True if it is."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_is(pid, marker):
            return True
        time.sleep(0.1)
    return not pid_is(pid, marker)


def tail(path: Path, lines: int = 25) -> str:
    """Last lines of a log file (or a note that it is missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} missing)"


def spawn_detached(args: list[str], logfile: Path, cfg: SandboxConfig) -> subprocess.Popen:
    """Start ``python -m mineru_fleet.sandbox ARGS`` in its own session (survives the caller)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cfg.repo), env.get("PYTHONPATH")]))
    with open(logfile, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "mineru_fleet.sandbox", *args],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             cwd=cfg.repo, env=env, start_new_session=True, close_fds=True)
    return p


def disown(proc: subprocess.Popen) -> None:
    """We never wait for a detached process: keep Popen.__del__ from warning that it still runs
    (it lives on in its own session; if it exits while we run, the zombie is harmless)."""
    proc.returncode = 0


@contextlib.contextmanager
def locked(cfg: SandboxConfig) -> Iterator[None]:
    """Serialize up/down (across processes) on ``.sandbox/lock``."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    with open(cfg.home / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_logging() -> None:
    """Timings go to stderr even when used as a library without logging configured."""
    if not log.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[sandbox %(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False

def pid_in_other_pidns(pid: int) -> bool:
    """True if ``pid`` lives in another PID namespace (i.e. it really is a container init)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    except OSError:
        return False
