"""A small ModelScope-compatible model hub over HTTPS, for tests and the sandbox (no real hub is reachable).

It implements exactly the calls that ``modelscope`` 1.30.0's ``snapshot_download`` makes
(read in ``modelscope/hub/api.py``, ``snapshot_download.py`` and ``file_download.py``)::

    GET /api/v1/models/{owner}/{name}[?Revision=R]                      repo_exists / get_model  (404: no such model)
    GET /api/v1/models/{owner}/{name}/revisions[?EndTime=T]             {"Data": {"RevisionMap": {"Branches": [...], "Tags": [...]}}}
    GET /api/v1/models/{owner}/{name}/repo/files?Revision=R&Recursive=  {"Data": {"Files": [{Name, Path, Type, Size, Sha256, Revision, ...}]}}
    GET /api/v1/models/{owner}/{name}/repo?Revision=R&FilePath=P        the file's bytes; ``Range: bytes=a-b`` -> 206

plus ``GET /_hub/stats`` (bytes and requests served) and ``POST /_hub/control`` (JSON: ``reset``,
``drop_after_bytes`` (close the connection of the next file download longer than that after that many bytes),
``rate_bps`` (throttle file bytes)) for the tests.

Storage: ``ROOT/<owner>/<name>/<revision>/<files>``; ``publish()`` copies a folder in. A revision named
``master`` is a branch, every other one a tag. A file ``ROOT/<owner>/<name>/.token`` makes the model
private: requests need the cookie ``m_session_id=<token>`` (what modelscope sends for a token).

TLS: ``ensure_certs(DIR, names)`` makes a test CA (``ca.pem``) and a server certificate whose SAN covers
``names`` (IPs and host names); clients trust the CA through ``REQUESTS_CA_BUNDLE``. ``MODELSCOPE_DOMAIN``
is ``HOST:PORT`` (modelscope prefixes ``https://``).

    python -m mineru_fleet.sandbox.modelhub --root DIR --certs DIR --bind 127.0.0.1 --port 8790
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from mineru_fleet.paths import REPO
from mineru_fleet.onhost.modelfetch import sha256_file  # the one the hosts run too

MASTER = "master"
CHUNK = 64 * 1024
#: An old creation time: modelscope picks tags created before its release date when no revision is given.
CREATED_AT = 1700000000


# ------------------------------------------------------------------------------------------------
# storage
# ------------------------------------------------------------------------------------------------




def publish(root: Path, model_id: str, revision: str, src: Path) -> Path:
    """Copy the model folder ``src`` into the hub as ``model_id`` at ``revision``; returns the revision folder."""
    dest = Path(root, *model_id.split("/"), revision)
    if dest.is_dir():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    (dest.parent / ".index").unlink(missing_ok=True)
    return dest


def set_private(root: Path, model_id: str, token: str | None) -> None:
    """Make a model private (only ``token`` may read it) or public again (``None``)."""
    f = Path(root, *model_id.split("/"), ".token")
    if token is None:
        f.unlink(missing_ok=True)
    else:
        f.write_text(token)
        f.chmod(0o600)


def commit_id(files: list[dict]) -> str:
    return hashlib.sha1(json.dumps([(f["Path"], f["Sha256"]) for f in files]).encode()).hexdigest()


#: (path, size, mtime_ns, inode) -> SHA-256: a real hub stores each file's hash when it is uploaded; without this
#: cache every revisions or files request hashed every file of every revision (3 s per request with a 2 GiB model)
_SHA256: dict[tuple, str] = {}


def _sha256(p: Path) -> str:
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(p)
    return _SHA256[key]


def file_list(rev_dir: Path) -> list[dict]:
    """The hub's file list of a revision folder, in the shape modelscope's API returns."""
    files = []
    for p in sorted(rev_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(rev_dir).as_posix()
        files.append({"Name": p.name, "Path": rel, "Type": "blob", "Size": p.stat().st_size,
                      "Sha256": _sha256(p), "IsLFS": p.stat().st_size > 1 << 20, "Mode": "33188",
                      "CommittedDate": CREATED_AT})
    cid = commit_id(files)
    for f in files:
        f["Revision"] = cid
    return files


# ------------------------------------------------------------------------------------------------
# TLS
# ------------------------------------------------------------------------------------------------


def ensure_certs(certs: Path, names: list[str]) -> dict[str, Path]:
    """A test CA and a server certificate for ``names``; reused while the names are covered."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certs.mkdir(parents=True, exist_ok=True)
    out = {"ca": certs / "ca.pem", "cert": certs / "server.pem", "key": certs / "server.key"}
    names_file = certs / "names.json"
    wanted = sorted(set(names))
    if all(p.is_file() for p in out.values()) and names_file.is_file():
        if set(wanted) <= set(json.loads(names_file.read_text())):
            return out
    now = datetime.datetime.now(datetime.timezone.utc)
    if out["ca"].is_file() and (certs / "ca.key").is_file():
        ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(out["ca"].read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mineru-fleet test hub CA")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (certs / "ca.key").write_bytes(ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        (certs / "ca.key").chmod(0o600)
        out["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    all_names = sorted(set(wanted) | ({"localhost", "127.0.0.1"}))
    sans = []
    for n in all_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    out["key"].chmod(0o600)
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    names_file.write_text(json.dumps(all_names))
    return out


# ------------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------------


@dataclass
class HubState:
    root: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    file_bytes: int = 0            # file content bytes sent (the "hub traffic" of a download)
    file_requests: int = 0
    api_requests: int = 0
    per_file: dict = field(default_factory=dict)
    drops: int = 0
    drop_after_bytes: int | None = None   # next file download longer than N: close the connection after N bytes
    rate_bps: int | None = None           # throttle file bytes (per connection)

    def stats(self) -> dict:
        with self.lock:
            return {"file_bytes": self.file_bytes, "file_requests": self.file_requests,
                    "api_requests": self.api_requests, "per_file": dict(self.per_file), "drops": self.drops}

    def reset(self) -> None:
        with self.lock:
            self.file_bytes = self.file_requests = self.api_requests = self.drops = 0
            self.per_file = {}


def _ok(data) -> dict:
    return {"Code": 200, "Success": True, "Message": "", "Data": data, "RequestId": "mineru-fleet-hub"}


class HubHandler(http.server.BaseHTTPRequestHandler):
    server_version = "mineru-fleet-hub/1"
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, fmt, *args):  # quiet; stats come from /_hub/stats
        pass

    # -- helpers ---------------------------------------------------------------------------------
    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"Code": status, "Success": False, "Message": message, "RequestId": "mineru-fleet-hub"})

    def _model_dir(self, owner: str, name: str) -> Path | None:
        d = self.state.root / owner / name
        return d if d.is_dir() and not owner.startswith(".") and not name.startswith(".") else None

    def _authorized(self, model: Path) -> bool:
        tok = model / ".token"
        if not tok.is_file():
            return True
        want = tok.read_text().strip()
        cookies = self.headers.get("Cookie", "")
        return any(c.strip() == f"m_session_id={want}" for c in cookies.split(";"))

    def _revisions(self, model: Path) -> tuple[list[dict], list[dict]]:
        branches, tags = [], []
        for d in sorted(model.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                item = {"Revision": d.name, "CreatedAt": CREATED_AT, "CommitId": commit_id(file_list(d)),
                        "Message": f"revision {d.name}"}
                (branches if d.name == MASTER else tags).append(item)
        return branches, tags

    # -- routes ----------------------------------------------------------------------------------
    def do_POST(self):  # noqa: N802
        if self.path != "/_hub/control":
            return self._error(404, "no such route")
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        if req.get("reset"):
            self.state.reset()
        if "drop_after_bytes" in req:
            self.state.drop_after_bytes = req["drop_after_bytes"]
        if "rate_bps" in req:
            self.state.rate_bps = req["rate_bps"]
        self._json(200, self.state.stats())

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["_hub", "stats"]:
            return self._json(200, self.state.stats())
        if len(parts) < 5 or parts[:3] != ["api", "v1", "models"]:
            return self._error(404, "no such route")
        owner, name, rest = parts[3], parts[4], parts[5:]
        is_file = rest == ["repo"]
        if not is_file:
            with self.state.lock:
                self.state.api_requests += 1
        model = self._model_dir(owner, name)
        if model is None:
            return self._error(404, f"The model {owner}/{name} does not exist")
        if not self._authorized(model):
            return self._error(401, "this model is private: log in with a token")
        if rest == []:
            rev = q.get("Revision")
            if rev and not (model / rev).is_dir():
                return self._error(404, f"The model {owner}/{name} has no revision {rev}")
            return self._json(200, _ok({"Id": f"{owner}/{name}", "Name": name, "Path": owner, "Revision": rev}))
        if rest == ["revisions"]:
            branches, tags = self._revisions(model)
            return self._json(200, _ok({"RevisionMap": {"Branches": branches, "Tags": tags}}))
        rev = q.get("Revision", MASTER)
        rev_dir = model / rev
        if not rev_dir.is_dir() or rev.startswith("."):
            return self._json(200, {"Code": 404, "Success": False, "Message": f"revision {rev} not found", "Data": None})
        if rest == ["repo", "files"]:
            return self._json(200, _ok({"Files": file_list(rev_dir)}))
        if is_file:
            return self._send_file(rev_dir, q.get("FilePath", ""))
        return self._error(404, "no such route")

    def _send_file(self, rev_dir: Path, rel: str) -> None:
        path = (rev_dir / rel).resolve()
        if not rel or rev_dir.resolve() not in path.parents or not path.is_file():
            return self._error(404, f"no file {rel!r}")
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else 0
            end = min(int(b), size - 1) if b else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1
        with self.state.lock:
            drop = self.state.drop_after_bytes
            if drop is not None and drop < length:  # the next download longer than that is cut
                self.state.drop_after_bytes = None
                self.state.drops += 1
            else:
                drop = None
            self.state.file_requests += 1
            rate = self.state.rate_bps
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                n = min(CHUNK, length - sent)
                if drop is not None:
                    n = min(n, drop - sent)
                    if n <= 0:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                block = f.read(n)
                self.wfile.write(block)
                sent += len(block)
                with self.state.lock:
                    self.state.file_bytes += len(block)
                    self.state.per_file[rel] = self.state.per_file.get(rel, 0) + len(block)
                if rate:
                    time.sleep(len(block) / rate)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        super().server_bind()


class Hub:
    """A running hub: ``Hub(root, certs, binds, port).start()``; ``.domain(ip)`` is MODELSCOPE_DOMAIN."""

    def __init__(self, root: Path, certs: Path, binds: list[str] | None = None, port: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.binds = binds or ["127.0.0.1"]
        self.paths = ensure_certs(Path(certs), self.binds)
        self.state = HubState(self.root)
        handler = type("Handler", (HubHandler,), {"state": self.state})
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.paths["cert"], self.paths["key"])
        self.servers = []
        for ip in self.binds:
            s = _Server((ip, port), handler)
            s.socket = ctx.wrap_socket(s.socket, server_side=True)
            port = s.server_address[1]
            self.servers.append(s)
        self.port = port
        self.threads: list[threading.Thread] = []

    @property
    def ca(self) -> Path:
        return self.paths["ca"]

    def domain(self, ip: str | None = None) -> str:
        return f"{ip or self.binds[0]}:{self.port}"

    def start(self) -> "Hub":
        for s in self.servers:
            t = threading.Thread(target=s.serve_forever, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def client(domain: str, ca: Path, path: str, body: dict | None = None) -> dict:
    """GET (or POST ``body`` to) the hub's own ``/_hub/*`` routes."""
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://{domain}{path}", data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return b"mineru_fleet.sandbox.modelhub" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def ensure_running(home: Path, binds: list[str], port: int = 8790) -> dict:
    """A detached hub serving ``home/root`` on ``binds``:``port`` (kept when already running with those binds).

    Returns ``{"pid", "port", "binds", "ca", "root"}`` (also written to ``home/hub.json``)."""
    import subprocess
    import sys

    home.mkdir(parents=True, exist_ok=True)
    binds = ["127.0.0.1", *sorted(set(binds) - {"127.0.0.1"})]
    meta_file = home / "hub.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        meta = {}
    if _alive(meta.get("pid")) and meta.get("binds") == binds and meta.get("port") == port:
        return meta
    stop_running(home)
    ensure_certs(home / "certs", binds)
    cmd = [sys.executable, "-m", "mineru_fleet.sandbox.modelhub", "--root", str(home / "root"), "--certs", str(home / "certs"),
           "--port", str(port)] + [x for b in binds for x in ("--bind", b)]
    log = open(home / "hub.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                            cwd=REPO)
    meta = {"pid": proc.pid, "port": port, "binds": binds, "ca": str(home / "certs" / "ca.pem"), "root": str(home / "root")}
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:
            client(f"127.0.0.1:{port}", home / "certs" / "ca.pem", "/_hub/stats")
            meta_file.write_text(json.dumps(meta) + "\n")
            return meta
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    last = (home / "hub.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    hint = (f": port {port} is taken, perhaps by the hub of another checkout (stop it there with"
            " `uv run mineru-fleet sandbox down`)") if "Address already in use" in last[0] else ""
    raise RuntimeError(f"model hub did not start: {last[0]}{hint} (see {home / 'hub.log'})")


def stop_running(home: Path) -> None:
    """Stop the hub ``ensure_running`` started (by its recorded PID, after checking its command line)."""
    import signal

    try:
        pid = json.loads((home / "hub.json").read_text()).get("pid")
    except (OSError, ValueError):
        return
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
    (home / "hub.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mineru_fleet.sandbox.modelhub", description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--certs", required=True)
    ap.add_argument("--bind", action="append", default=[])
    ap.add_argument("--port", type=int, default=8790)
    a = ap.parse_args(argv)
    hub = Hub(Path(a.root), Path(a.certs), a.bind or ["127.0.0.1"], a.port).start()
    print(f"hub serving {a.root} on https://{{{','.join(hub.binds)}}}:{hub.port} (CA {hub.ca})", flush=True)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
