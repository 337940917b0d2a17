"""``mineru-fleet status``, ``drain`` and ``enable``: the fleet as it is, and one server out of (or back into) the balancer.

``status`` makes one SSH round trip per host (systemd state, MainPID, uptime, release, deployment
record: ``rollouts.view_hosts``), reads each server's ``/health`` and ``/metrics`` from the controller
and the balancer's ``show stat``; a host or balancer that does not answer is a row that says so.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from mineru_fleet.controller import rollouts
from mineru_fleet.core import rollout as R
from mineru_fleet.core.rollout import Server


@dataclass
class Row:
    host: str
    instance: int
    systemd: str
    main_pid: str
    uptime_s: float | None
    release: str | None
    model_revision: str | None
    served_name: str
    ready: bool | None
    balancer: str
    running: float | None
    waiting: float | None
    kv_cache_usage: float | None
    rollout: str | None
    note: str = ""


def _health(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def collect(inventory: str) -> tuple[list[Row], list[str]]:
    """The rows of the fleet and notes (a balancer that did not answer, a rollout in progress)."""
    from mineru_fleet.controller import balancer
    from mineru_fleet.core import haproxy

    notes: list[str] = []
    hosts = rollouts.discover(inventory)
    views = rollouts.view_hosts(inventory, hosts)
    rows_lb: dict[str, Any] = {}
    try:
        with balancer.Runtime(inventory) as lb:  # one balancer's view (they are configured alike)
            rows_lb.update(haproxy.servers_of(lb.show_stat(only=lb.names[0])))
    except Exception as e:  # noqa: BLE001 - a balancer that does not answer is a note, not a crash
        notes.append(f"balancer: {e}")
    in_progress = {}
    state_file = rollouts.default_state_file(inventory)
    if state_file.is_file():
        try:
            st = R.from_json(state_file.read_text(), source=str(state_file))
            for s in st.servers:
                if s.phase in R.ACTIVE:
                    in_progress[s.server.host] = f"{st.id}: {s.phase}"
            if in_progress:
                notes.append(f"rollout {st.id} in progress ({state_file})")
        except R.StateError as e:
            notes.append(str(e))
    rows = []
    for h in hosts:
        v = views.get(h.name) or rollouts.HostView(False, error="no answer")
        for srv in h.servers():
            lb_row = rows_lb.get(haproxy.server_name(srv))
            bal = "-" if lb_row is None else str(lb_row.balancer)
            if not v.reachable:
                rows.append(Row(h.name, srv.instance, "unreachable", "-", None, None, None, h.served_name, None, bal,
                                None, None, None, in_progress.get(h.name), v.error or ""))
                continue
            url = h.url(srv.instance)
            m = rollouts.metrics(url) or {}
            rec = v.record or {}
            rows.append(Row(h.name, srv.instance, v.active.get(srv.instance, "unknown"), v.main_pid.get(srv.instance, "0"),
                            v.uptime_s.get(srv.instance), v.release, rec.get("model_revision"), h.served_name,
                            _health(url) if v.active.get(srv.instance) == "active" else False, bal,
                            m.get("running"), m.get("waiting"), m.get("kv_cache_usage"), in_progress.get(h.name)))
    return rows, notes


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}{unit}" if unit == "s" else (f"{v:.0%}" if unit == "%" else f"{v:g}")
    return str(v)


def text(rows: list[Row], notes: list[str]) -> str:
    head = ("HOST", "N", "SYSTEMD", "PID", "UPTIME", "RELEASE", "REVISION", "READY", "BALANCER", "RUN", "WAIT", "KV", "ROLLOUT")
    table = [head] + [(r.host, str(r.instance), r.systemd, r.main_pid, _fmt(r.uptime_s, "s"), _fmt(r.release), _fmt(r.model_revision),
                       {True: "yes", False: "NO", None: "-"}[r.ready], r.balancer, _fmt(r.running), _fmt(r.waiting),
                       _fmt(r.kv_cache_usage, "%"), r.rollout or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines += [f"note: {n}" for n in notes] + [f"{r.host}: {r.note}" for r in rows if r.note]
    if rows:
        lines.append(f"served name: {rows[0].served_name}")
    return "\n".join(lines)


def _quiet_pyinfra() -> None:
    import logging

    logging.getLogger("pyinfra").setLevel(logging.ERROR)  # its per-connection host-key notes are noise here


def cmd_status(inventory: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    _quiet_pyinfra()
    try:
        rows, notes = collect(inventory)
    except Exception as e:  # noqa: BLE001 - an inventory that cannot be read: a message
        print(f"mineru-fleet status: error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"servers": [asdict(r) for r in rows], "notes": notes}, indent=2), file=out)
    else:
        print(text(rows, notes), file=out)
    return 0 if all(r.systemd != "unreachable" for r in rows) else 3


def cmd_drain_enable(inventory: str, target: str, enable: bool, wait_s: float, out: TextIO = sys.stdout) -> int:
    """Drain one server and wait until it is idle (balancer and vLLM), or put it back and wait until UP."""
    from mineru_fleet.controller import balancer

    _quiet_pyinfra()
    try:
        server = Server.parse(target)
        hosts = {h.name: h for h in rollouts.discover(inventory)}
        if server.host not in hosts or server.instance not in hosts[server.host].ports:
            raise rollouts.RolloutRunError(f"{target}: no such server in {inventory} (servers: "
                                           + ", ".join(str(s) for h in hosts.values() for s in h.servers()) + ")")
        url = hosts[server.host].url(server.instance)
        t0 = time.monotonic()
        with balancer.Runtime(inventory) as lb:
            if enable:
                lb.set_state(server, "ready")
                lb.wait_until(server, lambda r: r.status.upper().startswith("UP"), timeout=wait_s)
                print(f"{server}: UP at the balancer after {time.monotonic() - t0:.1f}s", file=out)
                return 0
            lb.set_state(server, "drain")
            lb.wait_until(server, lambda r: r.scur == 0 and r.qcur == 0, timeout=wait_s)
            while True:
                g = rollouts.metrics(url)
                if g is None or (g.get("running", 0) == 0 and g.get("waiting", 0) == 0):
                    break
                if time.monotonic() - t0 > wait_s:
                    raise rollouts.RolloutRunError(f"{server}: still {g} in vLLM after {wait_s:.0f}s")
                time.sleep(0.5)
        print(f"{server}: drained and idle after {time.monotonic() - t0:.1f}s; it takes no new request until "
              f"`mineru-fleet enable {target}`. Now: systemctl restart mineru-vllm@{server.instance} on {server.host}", file=out)
        return 0
    except Exception as e:  # noqa: BLE001
        print(f"mineru-fleet {'enable' if enable else 'drain'}: error: {e}", file=sys.stderr)
        return 2
