"""``mineru-fleet rollout``: change a serving fleet batch by batch behind its balancer (issue 11).

The rules are pure and live in ``mineru_fleet/core/rollout.py`` (batches, the phase machine, the state
file's format, the resume table, the rollback order). This module does the steps:

- the balancer: HAProxy's runtime API on the ``balancers`` hosts (``controller/balancer.py``, through pyinfra);
- the hosts: ``pyinfra INVENTORY deploy.py --limit HOST`` (the very deploy an operator runs, with the
  rollout's ``--data``), ``rollback.py`` to put a recorded deployment back, and one pyinfra fact per host
  for what it runs now (``HostView``);
- the gate: from the controller, ``/health``, ``/v1/models`` (the stable served name) and one chat
  completion with a page image (``onhost/ready.gate``);
- the state: written atomically (temp file, fsync, rename) after every step; one rollout per state
  file at a time (``flock``).

A host's servers roll together (one deploy restarts all of them): batches count hosts, and each host
is tracked as its first server (``HOST:0``) while its other servers follow it through the balancer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mineru_fleet.core import rollout as R
from mineru_fleet.core.rollout import Phase, Server
from mineru_fleet.paths import REPO

DEPLOY = "deploy.py"
ROLLBACK = "rollback.py"


class RolloutRunError(RuntimeError):
    """The rollout cannot start or go on; the message names the host/server, the cause and the fix."""


# --------------------------------------------------------------------------------------------
# The fleet: which hosts serve, on which ports, under which name


@dataclass
class FleetHost:
    name: str  # inventory host name
    address: str  # where the controller reaches its servers (ssh_hostname or the name)
    ports: dict[int, int]  # instance -> port
    served_name: str
    state_dir: str
    data: dict[str, Any] = field(default_factory=dict)

    def servers(self) -> list[Server]:
        return [Server(self.name, i) for i in sorted(self.ports)]

    def url(self, instance: int) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.ports[instance]}"


def discover(inventory: str, data: Mapping[str, Any] | None = None) -> list[FleetHost]:
    """The serving hosts of an inventory and their planned servers (one SSH round trip per host: the preflight fact)."""
    from mineru_fleet.controller.gather import gather, load_inventory_hosts
    from mineru_fleet.core import haproxy, modelinfo
    from mineru_fleet.core.hostfacts import build_host_facts
    from mineru_fleet.core.planner import PlanError, plan
    from mineru_fleet.core.settings import SettingsError, load_settings

    entries = load_inventory_hosts(inventory)
    universal = set.intersection(*(set(e["groups"]) for e in entries)) if entries else set()
    serving = {e["name"] for e in entries if haproxy.roles_of(e["groups"], universal)[0]}
    gathered = gather(inventory, override_data=dict(data or {}))
    out = []
    for e in entries:
        if e["name"] not in serving:
            continue
        g = gathered[e["name"]]
        d = {**e["data"], **(data or {})}
        try:
            s = load_settings(d, e["name"])
        except SettingsError as err:
            raise RolloutRunError(f"{e['name']}: bad inventory data: {'; '.join(err.problems)}") from None
        if g.error:
            # unreachable now: keep it in the fleet with the default layout (one server); its deploy will fail
            ports = {0: s.port}
        else:
            try:
                try:
                    model = modelinfo.builtin_profile(s.model_id)
                except Exception:  # noqa: BLE001 - a model without a built-in profile plans without figures
                    model = None
                p = plan(build_host_facts(e["name"], g.files), s, model)
            except PlanError as err:
                raise RolloutRunError(f"{e['name']}: cannot plan: {err}") from None
            ports = {int(sv.name): sv.port for sv in p.servers}
        out.append(FleetHost(e["name"], str(d.get("ssh_hostname") or e["name"]), ports,
                             s.served_model_name or s.model_id, s.state_dir, d))
    if not out:
        raise RolloutRunError(f"inventory {inventory!r} has no serving host")
    return out


# --------------------------------------------------------------------------------------------
# What a host runs now (one fact per host through pyinfra)


@dataclass
class HostView:
    reachable: bool
    active: dict[int, str] = field(default_factory=dict)  # instance -> ActiveState
    main_pid: dict[int, str] = field(default_factory=dict)
    uptime_s: dict[int, float | None] = field(default_factory=dict)
    release: str | None = None
    record_id: str | None = None
    record: dict | None = None
    error: str | None = None


def view_command(state_dir: str, instances: list[int]) -> str:
    """Shell printing, in marked sections, each server's systemd state, the current release and deployment record."""
    import shlex

    q = shlex.quote
    units = " ".join(q(f"mineru-vllm@{i}.service") for i in instances)
    rec = q(f"{state_dir}/deployments/current")
    return (f"echo '## units'; systemctl show {units} -p Id -p ActiveState -p MainPID -p ActiveEnterTimestampMonotonic; "
            f"echo '## now'; cat /proc/uptime; echo '## release'; readlink /opt/mineru-fleet/current || true; "
            f"echo '## record'; readlink {rec} || true; echo '## record.json'; cat {rec}/record.json 2>/dev/null || true")


def parse_view(text: str) -> HostView:
    """The output of ``view_command`` as a HostView (pure; tolerant of missing sections)."""
    sections: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("## "):
            cur = line[3:].strip()
            sections[cur] = []
        elif cur:
            sections[cur].append(line)
    v = HostView(True)
    now = None
    try:
        now = float((sections.get("now") or ["0"])[0].split()[0])
    except (ValueError, IndexError):
        pass
    unit: dict[str, str] = {}
    for line in [*sections.get("units", []), ""]:
        if "=" in line:
            k, _, val = line.partition("=")
            unit[k] = val
            continue
        m = re.fullmatch(r"mineru-vllm@(\d+)\.service", unit.get("Id", ""))
        if m:
            i = int(m.group(1))
            v.active[i] = unit.get("ActiveState", "unknown")
            v.main_pid[i] = unit.get("MainPID", "0")
            mono = unit.get("ActiveEnterTimestampMonotonic", "0")
            v.uptime_s[i] = (now - int(mono) / 1e6) if (now and mono.isdigit() and int(mono) > 0
                                                      and v.active[i] == "active") else None
        unit = {}
    rel = [ln.strip() for ln in sections.get("release", []) if ln.strip()]
    v.release = rel[0].rstrip("/").rsplit("/", 1)[-1] if rel else None
    rid = [ln.strip() for ln in sections.get("record", []) if ln.strip()]
    v.record_id = rid[0].rsplit("/", 1)[-1] if rid else None
    try:
        rec = json.loads("\n".join(sections.get("record.json", [])) or "null")
        v.record = rec if isinstance(rec, dict) else None
    except ValueError:
        v.record = None
    return v


def deployment_of(view: HostView, instance: int) -> R.Deployment | None:
    """The core's Deployment of one server from its host's record (None when the host has none)."""
    rec = view.record
    if not rec or not view.record_id:
        return None
    sv = (rec.get("servers") or {}).get(str(instance)) or {}
    return R.Deployment(str(rec.get("release", "")), str(rec.get("model_revision", "")), str(sv.get("env_sha256", "")),
                        str(rec.get("unit_sha256", "")), record=view.record_id)


def view_hosts(inventory: str, hosts: list[FleetHost], timeout_s: float = 30) -> dict[str, HostView]:
    """One SSH round trip per host (pyinfra's public API): what each runs now; unreachable ones say so."""
    from pyinfra.api import Config, Inventory, State, StringCommand
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError

    inv = Inventory(([(h.name, h.data) for h in hosts], {}))
    state = State(inv, Config(CONNECT_TIMEOUT=int(timeout_s)), check_for_changes=False)
    try:
        connect_all(state)
    except PyinfraError:
        pass
    out: dict[str, HostView] = {}
    by_name = {h.name: h for h in hosts}
    for host in inv:
        fh = by_name[host.name]
        if not host.connected:
            out[host.name] = HostView(False, error="unreachable: could not connect over SSH")
            continue
        try:
            ok, res = host.run_shell_command(StringCommand(view_command(fh.state_dir, sorted(fh.ports))), _timeout=timeout_s)
            out[host.name] = parse_view(res.stdout) if ok else HostView(False, error=(res.stderr or res.stdout)[:300])
        except Exception as e:  # noqa: BLE001 - a host that drops the connection is a row that says so
            out[host.name] = HostView(False, error=f"{type(e).__name__}: {e}"[:300])
        finally:
            try:
                host.disconnect()
            except Exception:  # noqa: BLE001
                pass
    return out


# --------------------------------------------------------------------------------------------
# vLLM's own view of its load


def vllm_gauges(text: str) -> dict[str, float]:
    """``running``, ``waiting`` and ``kv_cache_usage`` (0..1) from vLLM's /metrics text (summed over label sets)."""
    out: dict[str, float] = {}
    names = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
             "vllm:gpu_cache_usage_perc": "kv_cache_usage", "vllm:kv_cache_usage_perc": "kv_cache_usage",
             "vllm:cpu_cache_usage_perc": "kv_cache_usage"}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFNaN]+)", line)
        if m and m.group(1) in names:
            try:
                out[names[m.group(1)]] = out.get(names[m.group(1)], 0.0) + float(m.group(3))
            except ValueError:
                pass
    return out


def metrics(url: str, timeout: float = 5) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as r:
            return vllm_gauges(r.read().decode(errors="replace"))
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# The state file and its lock


def default_state_file(inventory: str) -> Path:
    """``$XDG_STATE_HOME/mineru-fleet/rollouts/<inventory stem>-<digest of its path>.json``."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "mineru-fleet" / "rollouts"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(inventory).stem)[:40] or "inventory"
    return base / f"{stem}-{hashlib.sha256(str(Path(inventory).resolve()).encode()).hexdigest()[:8]}.json"


def write_state(path: Path, state: R.RolloutState) -> None:
    """Atomically: a temp file in the same folder, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, R.to_json(state).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_state(path: Path) -> R.RolloutState:
    try:
        return R.from_json(path.read_text(), source=str(path))
    except FileNotFoundError:
        raise RolloutRunError(f"no rollout state at {path}: nothing to resume or roll back (start one without --resume)") from None


class FleetLock:
    """One rollout per fleet: an exclusive ``flock`` on ``<state file>.lock`` held for the process' life."""

    def __init__(self, state_file: Path):
        self.path = state_file.with_name(state_file.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> FleetLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise RolloutRunError(f"another rollout of this fleet is running ({holder}; lock {self.path}): wait for it, "
                                  "or if it was killed, run again with --resume") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    inventory: str
    data: dict[str, Any]
    canary: int = 1
    batch: str = "1"
    max_fail: str = "0"
    drain_timeout: float = 600
    soak: float = 30
    up_timeout: float = 180
    gate_timeout: float = 120
    state_file: Path | None = None


def _failure(e: Exception) -> str:
    """A failed step's error as the state keeps it: our own messages as written, anything else with its type."""
    return (str(e) if isinstance(e, RolloutRunError) else f"{type(e).__name__}: {e}")[:2000]


class Runner:
    """Drives one rollout: every step recorded in the state file before it is done."""

    def __init__(self, opts: Options, out: TextIO = sys.stdout, clock: Callable[[], float] = time.time):
        self.o, self.out, self.clock = opts, out, clock
        self.state_file = opts.state_file or default_state_file(opts.inventory)
        self.lock = threading.Lock()
        self.state: R.RolloutState | None = None
        self.hosts: dict[str, FleetHost] = {}
        self.lb = None

    # -- output and state --------------------------------------------------------------------------
    def say(self, line: str) -> None:
        with self.lock:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.out, flush=True)

    def step(self, server: Server, to: Phase, error: str | None = None) -> None:
        with self.lock:
            self.state = R.step(self.state, server, to, at=self.clock(), error=error)
            write_state(self.state_file, self.state)
            s = self.state.get(server)
        label = "canary" if s.batch == 0 and self.state.options.canary else f"batch {s.batch}"
        self.say(f"{label:<8} {server.host:<18} {str(to):<13}" + (f" {error}" if error else ""))

    def host_servers(self, server: Server) -> list[Server]:
        return self.hosts[server.host].servers()

    # -- the balancer --------------------------------------------------------------------------------
    def set_lb(self, server: Server, state: str) -> None:
        for s in self.host_servers(server):
            self.lb.set_state(s, state)

    def wait_idle(self, server: Server) -> None:
        end = time.monotonic() + self.o.drain_timeout
        fh = self.hosts[server.host]
        for s in self.host_servers(server):
            left = max(1.0, end - time.monotonic())
            self.lb.wait_until(s, lambda r: r.scur == 0 and r.qcur == 0, timeout=left)
            while True:  # and vLLM's own gauges: nothing running or waiting
                g = metrics(fh.url(s.instance))
                if g is None or (g.get("running", 0) == 0 and g.get("waiting", 0) == 0):
                    break
                if time.monotonic() > end:
                    raise RolloutRunError(f"{s}: vLLM still has {g.get('running')} running / {g.get('waiting')} waiting "
                                          f"requests after --drain-timeout {self.o.drain_timeout:.0f}s")
                time.sleep(0.5)

    def wait_up(self, server: Server) -> None:
        for s in self.host_servers(server):
            self.lb.wait_until(s, lambda r: r.status.upper().startswith("UP"), timeout=self.o.up_timeout)

    # -- the host ------------------------------------------------------------------------------------
    def pyinfra(self, deploy_file: str, host: str, data: Mapping[str, Any]) -> tuple[int, str]:
        cmd = [sys.executable, "-m", "pyinfra", self.o.inventory, deploy_file, "-y", "--limit", host]
        for k, v in data.items():
            cmd += ["--data", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout + r.stderr

    def gate(self, server: Server) -> None:
        from mineru_fleet.onhost.ready import gate

        fh = self.hosts[server.host]
        for s in self.host_servers(server):
            ok, msg = gate(fh.url(s.instance), fh.served_name, timeout=self.o.gate_timeout)
            if not ok:
                raise RolloutRunError(f"{s}: gate failed: {msg}")

    def diagnose(self, host: str) -> str:
        """``mineru-fleet diagnose`` findings of each of the host's servers after a failed start (its journal since
        the unit's last start, read through pyinfra), one line each; best effort."""
        from mineru_fleet.controller.gather import gather_journals
        from mineru_fleet.core import diagnose as dg
        from mineru_fleet.core.diagnose import clean

        lines = []
        for srv in self.hosts[host].servers():
            try:
                g = gather_journals(self.o.inventory, f"mineru-vllm@{srv.instance}").get(host)
                d = dg.parse_log((g.files or {}).get("journal", "")) if g and not g.error else None
            except Exception as e:  # noqa: BLE001 - the rollout's own message must not be lost to a diagnose problem
                lines.append(f"{srv}: journal not read ({type(e).__name__}: {e})")
                continue
            if d is None:
                lines.append(f"{srv}: journal not read ({g.error if g else 'no such host'})")
                continue
            for f in d.findings:
                if f.severity in ("error", "warning"):
                    ev = f" [{clean(f.evidence.text)[:160]}]" if getattr(f, "evidence", None) and getattr(f.evidence, "text", "") else ""
                    lines.append(f"{srv} {f.severity} {f.code}: {clean(f.message)}{ev}" + (f" -- fix: {clean(f.fix)}" if f.fix else ""))
        return "\n".join(lines) or "no finding in the journal"

    # -- one server (a host unit) through the forward path ------------------------------------------
    def forward(self, server: Server) -> None:
        while True:
            s = self.state.get(server)
            try:
                if s.phase is Phase.PENDING or s.phase is Phase.DRAINING:
                    if s.phase is Phase.PENDING:
                        self.step(server, Phase.DRAINING)
                    self.set_lb(server, "drain")
                    self.wait_idle(server)
                    self.step(server, Phase.DRAINED)
                elif s.phase is Phase.DRAINED:
                    self.step(server, Phase.MAINT)
                elif s.phase is Phase.MAINT:
                    self.set_lb(server, "maint")
                    self.step(server, Phase.DEPLOYING)
                elif s.phase is Phase.DEPLOYING:
                    rc, output = self.pyinfra(DEPLOY, server.host, self.o.data)
                    if rc != 0:
                        raise RolloutRunError(self.deploy_failure(server.host, output))
                    self.step(server, Phase.GATING)
                elif s.phase is Phase.GATING:
                    self.gate(server)
                    self.step(server, Phase.ENABLING)
                elif s.phase is Phase.ENABLING:
                    self.set_lb(server, "ready")
                    self.wait_up(server)
                    self.step(server, Phase.UP)
                elif s.phase is Phase.UP:
                    self.step(server, Phase.SOAKING)
                elif s.phase is Phase.SOAKING:
                    self.soak(server)
                    self.step(server, Phase.DONE)
                else:
                    return
            except Exception as e:  # noqa: BLE001 - any failed step fails this server, named, and the batch decides
                self.step(server, Phase.FAILED, error=_failure(e))
                return

    def deploy_failure(self, host: str, output: str) -> str:
        if re.search(r"Could not connect|No hosts remaining|unreachable|Connection (refused|timed out)", output) and \
                "Starting operation" not in output:
            return f"{host}: unreachable: the deploy could not connect (check the host, its SSH address and key)"
        tail = [ln for ln in output.splitlines() if ln.strip()][-12:]
        findings = ""
        if "not ready" in output or "readiness" in output.lower() or "mineru-vllm@" in output:
            findings = "\n  diagnose:\n    " + self.diagnose(host).replace("\n", "\n    ")
        return f"{host}: the deploy failed:\n    " + "\n    ".join(tail) + findings

    def soak(self, server: Server) -> None:
        end = time.monotonic() + self.o.soak
        fh = self.hosts[server.host]
        while time.monotonic() < end:
            for s in self.host_servers(server):
                row = self.lb.server_rows(s)
                bad = {b: r.status for b, r in row.items() if not r.status.upper().startswith("UP")}
                if bad:
                    raise RolloutRunError(f"{s}: went {bad} at the balancer while soaking")
                try:
                    with urllib.request.urlopen(f"{fh.url(s.instance)}/health", timeout=10) as r:
                        if r.status != 200:
                            raise RolloutRunError(f"{s}: /health answered {r.status} while soaking")
                except OSError as e:
                    raise RolloutRunError(f"{s}: /health failed while soaking: {e}") from None
            time.sleep(min(2.0, max(0.0, end - time.monotonic())))

    # -- taking servers back -----------------------------------------------------------------------
    def take_back(self, step: R.RollbackStep) -> None:
        server = step.server
        s = self.state.get(server)
        serving = s.phase is Phase.DONE or (s.phase is Phase.FAILED and s.failed_at in (Phase.ENABLING, Phase.UP, Phase.SOAKING))
        if s.phase in R.ACTIVE:  # --rollback of a rollout that was interrupted in this server's step
            serving = s.phase in (Phase.ENABLING, Phase.UP, Phase.SOAKING)
            self.step(server, Phase.FAILED, error="interrupted; taken back by --rollback")
        self.step(server, Phase.ROLLING_BACK)
        try:
            if step.action == "impossible":
                raise RolloutRunError(f"{server.host}: {step.reason}")
            if step.action == "redeploy":
                if serving:  # back in the balancer: drain it first
                    self.set_lb(server, "drain")
                    self.wait_idle(server)
                self.set_lb(server, "maint")
                rc, output = self.pyinfra(ROLLBACK, server.host, {"rollback_record": step.previous.record})
                if rc != 0:
                    raise RolloutRunError(self.deploy_failure(server.host, output))
                self.gate(server)
            self.set_lb(server, "ready")
            self.wait_up(server)
            self.step(server, Phase.ROLLED_BACK)
        except Exception as e:  # noqa: BLE001
            self.step(server, Phase.ROLLBACK_FAILED, error=_failure(e))

    def run_parallel(self, fn, items) -> None:
        threads = [threading.Thread(target=fn, args=(it,)) for it in items]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- the whole rollout -------------------------------------------------------------------------
    def prepare(self) -> None:
        from mineru_fleet.controller import balancer

        self.hosts = {h.name: h for h in discover(self.o.inventory, self.o.data)}
        self.lb = balancer.Runtime(self.o.inventory)

    def start(self, dry_run: bool = False) -> int:
        fleet = [Server(h, 0) for h in self.hosts]
        opts = R.Options(canary=R.parse_canary(self.o.canary), batch=self.o.batch, max_fail=self.o.max_fail)
        batches = R.plan_batches(fleet, opts.canary, opts.sizes)
        self.say("rollout order (batches count hosts; a host's servers roll together):\n"
                 + R.format_plan(batches).replace(":0", ""))
        if dry_run:
            return 0
        views = view_hosts(self.o.inventory, list(self.hosts.values()))
        previous = {Server(h, 0): deployment_of(v, 0) for h, v in views.items() if v.reachable}
        rid = time.strftime("%Y%m%d-%H%M%S-") + hashlib.sha256(os.urandom(8)).hexdigest()[:6]
        target = {"inventory": self.o.inventory, "data": dict(self.o.data)}  # --resume deploys exactly this again
        self.state = R.new_rollout(rid, target, fleet, opts, at=self.clock(), previous=previous)
        write_state(self.state_file, self.state)
        self.say(f"rollout {rid}: state in {self.state_file}")
        return self.go()

    def go(self) -> int:
        while True:
            active = sorted({s.batch for s in self.state.servers if s.phase in R.ACTIVE})
            index = active[0] if active else R.next_batch(self.state)
            if index is None:
                break
            batch = [s.server for s in self.state.batch(index) if s.phase is Phase.PENDING or s.phase in R.ACTIVE]
            self.run_parallel(self.forward, batch)
            verdict = R.judge_batch(self.state, index)
            if verdict.proceed and verdict.rollback:  # within --max-fail: the failed ones go back, then on
                self.say(f"batch {index}: {verdict.reason}; rolling back {', '.join(s.host for s in verdict.rollback)}")
                self.run_parallel(self.take_back, [st for st in R.rollback_steps(self.state, batch=index)
                                                   if st.server in verdict.rollback])
                verdict = R.judge_batch(self.state, index)
            if not verdict.proceed:
                return self.stop_after(index, verdict)
        self.say(f"rollout {self.state.id}: done, {len(self.state.servers)} host(s)")
        return 0 if not any(s.phase in R.FAILURES for s in self.state.servers) else 1

    def stop_after(self, index: int, verdict: R.Verdict) -> int:
        failed = [s for s in self.state.batch(index) if s.phase is Phase.FAILED]
        self.say(f"batch {index} stops the rollout ({verdict.reason}): rolling it back; the hosts after it are not touched")
        self.run_parallel(self.take_back, [st for st in R.rollback_steps(self.state, batch=index) if st.server in verdict.rollback])
        with self.lock:
            self.state = R.stop(self.state, verdict.reason, at=self.clock())
            write_state(self.state_file, self.state)
        for s in failed:
            print(f"FAILED {s.server.host} (server {s.server}, at {s.failed_at}): {s.error}", file=sys.stderr)
        for s in self.state.batch(index):
            if s.phase is Phase.ROLLBACK_FAILED:
                print(f"ROLLBACK FAILED {s.server.host}: {s.error}", file=sys.stderr)
        return 1

    def observe(self) -> dict[Server, R.Observation]:
        views = view_hosts(self.o.inventory, list(self.hosts.values()))
        out = {}
        for s in self.state.servers:
            v = views.get(s.server.host)
            try:
                row = self.lb.server_rows(s.server)
                bal = next(iter(row.values())).balancer
            except Exception:  # noqa: BLE001 - absent from the balancer
                bal = None
            if v is None or not v.reachable:
                out[s.server] = R.Observation.unreachable(bal)
            else:
                out[s.server] = R.Observation(True, bal, v.active.get(0) == "active", deployment_of(v, 0))
        return out

    def resume(self) -> int:
        self.state = read_state(self.state_file)
        decisions = R.reconcile(self.state, self.observe())
        held = [d for d in decisions if d.phase is None]
        for d in decisions:
            self.say(f"resume {d.server.host:<18} {str(d.recorded):<13} -> {d.phase or 'HOLD'}  ({d.rule}: {d.reason})")
        if held:
            raise RolloutRunError("cannot resume: " + "; ".join(f"{d.server}: {d.reason}" for d in held))
        with self.lock:
            self.state = R.apply_decisions(self.state, decisions, at=self.clock())
            write_state(self.state_file, self.state)
        return self.go()

    def rollback_all(self) -> int:
        self.state = read_state(self.state_file)
        steps = R.rollback_steps(self.state)
        if not steps:
            self.say("nothing to roll back: no server of this rollout was touched")
            return 0
        by_batch: dict[int, list[R.RollbackStep]] = {}
        for st in steps:
            by_batch.setdefault(st.batch, []).append(st)
        for index in sorted(by_batch, reverse=True):
            self.run_parallel(self.take_back, by_batch[index])
        bad = [s for s in self.state.servers if s.phase is Phase.ROLLBACK_FAILED]
        for s in bad:
            print(f"ROLLBACK FAILED {s.server.host}: {s.error}", file=sys.stderr)
        return 1 if bad else 0


def main(opts: Options, resume: bool = False, rollback: bool = False, dry_run: bool = False) -> int:
    """Run (or resume, or roll back) a rollout; the exit code."""
    from mineru_fleet.controller.balancer import BalancerAPIError
    from mineru_fleet.controller.gather import GatherError

    import logging

    logging.getLogger("pyinfra").setLevel(logging.ERROR)  # its per-connection host-key notes are noise here
    runner = Runner(opts)
    try:
        R.Options(canary=R.parse_canary(opts.canary), batch=opts.batch, max_fail=opts.max_fail)  # the flags, before any host
        if resume or rollback:
            st = read_state(runner.state_file)
            recorded = st.target.get("inventory")
            if recorded and os.path.abspath(recorded) != os.path.abspath(opts.inventory):
                raise RolloutRunError(f"{runner.state_file} is a rollout of {recorded}, not {opts.inventory}: give that "
                                      "inventory (or another --state-file)")
            if resume:  # the target is the recorded one: the resumed hosts get the same deploy as the others
                opts.data = dict(st.target.get("data") or {})
        if dry_run:
            runner.hosts = {h.name: h for h in discover(opts.inventory, opts.data)}
            return runner.start(dry_run=True)
        with FleetLock(runner.state_file):
            runner.prepare()
            try:
                if resume:
                    return runner.resume()
                if rollback:
                    return runner.rollback_all()
                return runner.start()
            finally:
                runner.lb.close()
    except (RolloutRunError, GatherError, BalancerAPIError, R.StateError, R.FlagError, R.RolloutError, ValueError, OSError) as e:
        print(f"mineru-fleet rollout: error: {e}", file=sys.stderr)
        return 2
