"""The controller file server: serves .sandbox/serve/ to the air-gapped hosts on each veth address."""

from __future__ import annotations

import functools
import http.server
import json
import signal
import socket
import sys
import threading
import time
import urllib.request

from mineru_fleet.sandbox.config import SandboxConfig, SandboxError, default_config, log, serve_dir
from mineru_fleet.sandbox.procs import disown, pid_is, read_pid, send_signal, spawn_detached, tail, wait_gone


class _FreebindServer(http.server.ThreadingHTTPServer):
    """Threading HTTP server that may bind an address not (yet) configured: a container reboot
    briefly removes its veth, and the listener must survive that."""

    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        super().server_bind()


def serve(directory: str, port: int, binds: list[str]) -> None:
    """Run the static file server (one listener per address) until SIGTERM."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    servers = [_FreebindServer((ip, port), handler) for ip in binds]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving {directory} on port {port} at {', '.join(binds)}", flush=True)
    servers[0].serve_forever()


def fileserver_state(cfg: SandboxConfig) -> tuple[int | None, dict]:
    """(PID if alive, recorded settings) of this instance's file server."""
    pid = read_pid(cfg.run / "fileserver.pid")
    try:
        meta = json.loads((cfg.run / "fileserver.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return (pid if pid_is(pid, "serve") else None), meta


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start_file_server(config: SandboxConfig, controller_ips: list[str]) -> int:
    """(Re)start the file server so it listens on 127.0.0.1 and every ``controller_ips``;
    keep a running one whose addresses already match.  Returns its PID."""
    cfg = config
    serve_dir(cfg)
    binds = ["127.0.0.1", *sorted(set(controller_ips))]
    pid, meta = fileserver_state(cfg)
    if pid and meta.get("binds") == binds and meta.get("port") == cfg.port:
        return pid
    stop_file_server(cfg)
    cfg.run.mkdir(parents=True, exist_ok=True)
    logfile = cfg.run / "fileserver.log"
    args = ["serve", "--dir", str(cfg.serve), "--port", str(cfg.port)]
    for b in binds:
        args += ["--bind", b]
    proc = spawn_detached(args, logfile, cfg)
    pid = proc.pid
    (cfg.run / "fileserver.pid").write_text(f"{pid}\n")
    (cfg.run / "fileserver.json").write_text(json.dumps({"port": cfg.port, "binds": binds}) + "\n")
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if http_ok(f"http://127.0.0.1:{cfg.port}/"):
            disown(proc)
            log.info("file server pid %d on port %d (%s)", pid, cfg.port, ", ".join(binds))
            return pid
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    else:
        disown(proc)
    raise SandboxError(f"file server did not start on port {cfg.port} (is the port taken? "
                       f"`ss -ltnp | grep {cfg.port}`)\n{tail(logfile, 15)}")


def stop_file_server(config: SandboxConfig | None = None) -> None:
    """Stop this instance's file server by its recorded PID."""
    cfg = config or default_config()
    pid, _ = fileserver_state(cfg)
    if pid:
        send_signal(pid, signal.SIGTERM)
        if not wait_gone(pid, "serve", 5):
            send_signal(pid, signal.SIGKILL)
            wait_gone(pid, "serve", 2)
    for name in ("fileserver.pid", "fileserver.json", "fileserver.log"):
        (cfg.run / name).unlink(missing_ok=True)
