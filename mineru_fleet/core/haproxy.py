"""HAProxy in front of the fleet, the pure part: server names, the config, ``show stat`` rows, runtime commands.

The balancer role (``roles/balancer.py``) renders one HAProxy backend with a server per planned vLLM
server of every serving host; the controller (``mineru_fleet/controller/balancer.py``) reads and
changes the servers through HAProxy's runtime API. Everything here is data in, data out.

Server names read like the fleet and map back to a ``Server(host, instance)``: the inventory host
name with every character HAProxy refuses in a name replaced by ``-``, then ``_`` and the instance
(``mineru-vllm@N``)::

    >>> server_name(Server("gpu-1.dc2", 0)), server_name(Server("192.168.1.5", 1)), server_name(Server("gpu_a", 0))
    ('gpu-1.dc2_0', '192.168.1.5_1', 'gpu-a_0')
"""

from __future__ import annotations

import csv
import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

from mineru_fleet.core.rollout import Balancer, Server, parse_haproxy_status, sort_key
from mineru_fleet.core.settings import DNS_NAME, Settings
from mineru_fleet.paths import TEMPLATES

#: the inventory group whose hosts run HAProxy
GROUP = "balancers"
FRONTEND = "mineru_api"
BACKEND = "mineru"
CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
#: admin-level runtime API, mode 0600: only root reaches it
ADMIN_SOCKET = "/run/haproxy/admin.sock"
#: where the role saves the servers' runtime state (drain, maint, weight) right before a reload
STATE_FILE = "/var/lib/haproxy/server-state"
#: states ``set server <backend>/<server> state`` takes
STATES = ("ready", "drain", "maint")

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9.-]")
_NAME = re.compile(r"[A-Za-z0-9.-]+_\d+")


class HAProxyError(ValueError):
    """A config that cannot be written, or runtime API output that cannot be read; the message says why."""


# --------------------------------------------------------------------------------------------
# which host does what


def roles_of(groups: Iterable[str], universal: Iterable[str] = ()) -> tuple[bool, bool]:
    """``(serves, balances)`` of an inventory host from its groups.

    A host of the group ``balancers`` runs HAProxy; one that is in no other group serves nothing.
    Every other host serves (the default: a host in no group at all). Groups that hold every host
    of the inventory (``universal``: ``all``, the group pyinfra names after the inventory file) say
    nothing about a host and are not counted.

    >>> roles_of(["balancers"]), roles_of(["balancers", "gpu"]), roles_of(["sandbox"]), roles_of([])
    ((False, True), (True, True), (True, False), (True, False))
    >>> roles_of(["balancers", "prod"], universal=["prod"])
    (False, True)
    """
    gs = set(groups) - {"all"} - (set(universal) - {GROUP})
    balances = GROUP in gs
    return (not balances or bool(gs - {GROUP})), balances


# --------------------------------------------------------------------------------------------
# the backend servers


def server_name(server: Server) -> str:
    """The HAProxy server name of ``server``: ``<host>_<instance>``, the host's characters other
    than letters, digits, ``.`` and ``-`` replaced by ``-`` (HAProxy also takes ``_`` and ``:``,
    but ``_`` separates the instance and ``:`` means a port elsewhere)."""
    return f"{_NOT_IN_NAME.sub('-', server.host)}_{server.instance}"


@dataclass(frozen=True)
class BackendServer:
    """One ``server`` line of the backend: which of our servers, its HAProxy name and where it listens."""

    server: Server
    name: str
    address: str
    port: int

    @property
    def endpoint(self) -> str:
        """``address:port`` as HAProxy reads it (an IPv6 address in brackets)."""
        return f"{_bracket(self.address)}:{self.port}"


def _bracket(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address


def address_problem(address: object) -> str | None:
    """Why ``address`` cannot be a server address in the config (None: an IP address or a DNS name)."""
    if not isinstance(address, str):
        return "is not text"
    try:
        ipaddress.ip_address(address)
        return None
    except ValueError:
        pass
    return None if DNS_NAME.fullmatch(address) else "is not an IP address or a DNS name"


def backend_address(host_name: str, data: Mapping[str, Any], settings: Settings) -> str:
    """Where the balancers reach a serving host: ``mineru_balancer_backend_address``, else pyinfra's
    ``ssh_hostname``, else the inventory host name; HAProxyError when that is no address.

    >>> backend_address("gpu-1", {"ssh_hostname": "10.0.0.5"}, Settings())
    '10.0.0.5'
    """
    if settings.balancer_backend_address:
        return settings.balancer_backend_address
    for what, value in (("ssh_hostname", data.get("ssh_hostname")), ("the inventory host name", host_name)):
        if value is None:
            continue
        problem = address_problem(value)
        if problem:
            raise HAProxyError(f"{host_name}: {what} {str(value)[:60]!r} {problem}: set mineru_balancer_backend_address "
                               "to the address the balancers reach this host at")
        return value
    raise HAProxyError(f"{host_name}: no address: set mineru_balancer_backend_address")


def backend_servers(entries: Iterable[tuple[str, int, str, int]]) -> list[BackendServer]:
    """``(host, instance, address, port)`` of every planned server -> the backend's servers in the
    fleet's stable order. Two servers with one name or one ``address:port`` are an error.

    >>> [b.name for b in backend_servers([("mf2", 0, "10.0.0.2", 30000), ("mf1", 0, "10.0.0.1", 30000)])]
    ['mf1_0', 'mf2_0']
    """
    out = sorted((BackendServer(Server(h, i), server_name(Server(h, i)), a, int(p)) for h, i, a, p in entries),
                 key=lambda b: sort_key(b.server))
    names: dict[str, Server] = {}
    ends: dict[str, Server] = {}
    for b in out:
        if b.name in names:
            raise HAProxyError(f"servers {names[b.name]} and {b.server} would both be named {b.name!r} in HAProxy: "
                               "rename one of the hosts in the inventory")
        if b.endpoint in ends:
            raise HAProxyError(f"servers {ends[b.endpoint]} and {b.server} are both at {b.endpoint}: set "
                               "mineru_balancer_backend_address of each host to its own address")
        names[b.name], ends[b.endpoint] = b.server, b.server
    return out


def server_for(name: str, servers: Iterable[Server]) -> Server | None:
    """The server of the fleet whose HAProxy name is ``name`` (None when none is).

    >>> server_for("gpu-a_1", [Server("gpu_a", 1), Server("gpu_a", 0)])
    Server(host='gpu_a', instance=1)
    """
    return next((s for s in servers if server_name(s) == name), None)


# --------------------------------------------------------------------------------------------
# the config


def _word(value: object) -> str:
    """One word of the config (a name or address): no spaces, quotes, ``#`` or control characters."""
    s = str(value)
    if not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", s):
        raise HAProxyError(f"{s[:60]!r} cannot be written into the HAProxy config as one word")
    return s


def render_config(settings: Settings, servers: Sequence[BackendServer]) -> str:
    """``/etc/haproxy/haproxy.cfg`` for a balancer host with ``settings`` in front of ``servers``."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["word"] = _word
    return env.get_template("haproxy.cfg.j2").render(
        s=settings, servers=list(servers), bind=f"{_bracket(settings.balancer_bind)}:{settings.balancer_port}",
        frontend=FRONTEND, backend=BACKEND, admin_socket=ADMIN_SOCKET, state_file=STATE_FILE,
    )


# --------------------------------------------------------------------------------------------
# the runtime API


def _int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("-").isdigit() else None


@dataclass(frozen=True)
class StatRow:
    """One line of ``show stat``: a frontend, a backend or a server, with the fields we read by name
    (every field is in ``fields`` as text)."""

    pxname: str
    svname: str
    status: str
    scur: int | None
    qcur: int | None
    weight: int | None
    check_status: str
    stot: int | None
    fields: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_server(self) -> bool:
        return self.svname not in ("FRONTEND", "BACKEND")

    @property
    def balancer(self) -> Balancer:
        """The status as the rollout reads it (UP, DRAIN, MAINT, DOWN)."""
        return parse_haproxy_status(self.status)

    @property
    def idle(self) -> bool:
        """No session on the server and none waiting for it (the rollout's drained rule at the balancer)."""
        return self.scur == 0 and self.qcur == 0


def parse_show_stat(text: str) -> list[StatRow]:
    """The rows of ``show stat`` (CSV; the first line names the fields: ``# pxname,svname,...``).

    Fields are read by their names in the header, so the order of any HAProxy version works.

    >>> rows = parse_show_stat("# pxname,svname,qcur,scur,status,weight,check_status,stot,\\n"
    ...                        "mineru,mf1_0,0,2,UP,1,L7OK,10,\\nmineru,BACKEND,0,2,UP,1,,10,\\n")
    >>> [(r.svname, r.scur, r.balancer.value, r.is_server) for r in rows]
    [('mf1_0', 2, 'UP', True), ('BACKEND', 2, 'UP', False)]
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        got = lines[0][:200] if lines else "nothing"
        raise HAProxyError(f"not the output of `show stat` (no '# pxname,...' header line): {got!r}")
    header = [h.strip() for h in lines[0][2:].split(",")]
    if header[:2] != ["pxname", "svname"]:
        raise HAProxyError(f"`show stat` header does not start with pxname,svname: {lines[0][:200]!r}")
    out = []
    for values in csv.reader(lines[1:]):
        f = {k: v for k, v in zip(header, values) if k}
        out.append(StatRow(
            pxname=f.get("pxname", ""), svname=f.get("svname", ""), status=f.get("status", ""),
            scur=_int(f.get("scur", "")), qcur=_int(f.get("qcur", "")), weight=_int(f.get("weight", "")),
            check_status=f.get("check_status", ""), stot=_int(f.get("stot", "")), fields=f,
        ))
    return out


def servers_of(rows: Iterable[StatRow], backend: str = BACKEND) -> dict[str, StatRow]:
    """``{server name: row}`` of the servers of ``backend``."""
    return {r.svname: r for r in rows if r.pxname == backend and r.is_server}


def set_state_command(name: str, state: str, backend: str = BACKEND) -> str:
    """The runtime command that puts a server in ``state`` (ready, drain or maint).

    >>> set_state_command("mf1_0", "drain")
    'set server mineru/mf1_0 state drain'
    """
    if state not in STATES:
        raise HAProxyError(f"state {state!r} is not one of {', '.join(STATES)}")
    if not _NAME.fullmatch(name) or not re.fullmatch(r"[A-Za-z0-9._-]+", backend):
        raise HAProxyError(f"{name!r} is not one of our server names (<host>_<instance>)")
    return f"set server {backend}/{name} state {state}"


def runtime_shell(command: str, socket: str = ADMIN_SOCKET) -> str:
    """Shell that sends one runtime command to HAProxy's admin socket (root) and prints the answer.

    >>> runtime_shell("show stat")
    "printf '%s\\\\n' 'show stat' | socat -t 30 - UNIX-CONNECT:/run/haproxy/admin.sock"
    """
    if re.search(r"[\x00-\x1f;]", command):
        raise HAProxyError(f"{command[:60]!r}: one runtime command per call (no ';' or control characters)")
    return f"printf '%s\\n' {shlex.quote(command)} | socat -t 30 - {shlex.quote('UNIX-CONNECT:' + socket)}"


def runtime_error(answer: str) -> str | None:
    """The error in a runtime command's answer (None when it did what was asked: empty or informative text)."""
    text = answer.strip()
    bad = ("Unknown command", "No such", "Require ", "Permission denied", "Invalid", "not found", "can't", "cannot")
    return text if any(b in text for b in bad) else None


def save_state_and_reload_shell(socket: str = ADMIN_SOCKET, state_file: str = STATE_FILE) -> str:
    """Shell run when the config changed: save the servers' runtime state (drain, maint, weight) for the
    new process (``load-server-state-from-file``), then reload; start HAProxy when it is not running.
    ``systemctl reload`` keeps the master process and its listening sockets: no connection is refused."""
    q = shlex.quote
    tmp = state_file + ".new"
    save = (f"{runtime_shell('show servers state', socket)} > {q(tmp)} && grep -q '^1$' {q(tmp)} && mv -f {q(tmp)} {q(state_file)}"
            f" || rm -f {q(tmp)}")
    return (f"if systemctl is-active --quiet haproxy.service; then {{ {save}; }}; systemctl reload haproxy.service; "
            "else systemctl start haproxy.service; fi")


# --------------------------------------------------------------------------------------------
# the balancers in the servers' allow-list


def host_addresses(ipv4: Mapping[str, Sequence[str]] | None, ipv6: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The addresses a host may send from (pyinfra's ``Ipv4Addrs``/``Ipv6Addrs`` facts): loopback and
    link-local left out, in a stable order.

    >>> host_addresses({"lo": ["127.0.0.1"], "eth0": ["10.0.0.9"]}, {"eth0": ["fe80::1", "2001:db8::9"]})
    ['10.0.0.9', '2001:db8::9']
    """
    out: list[str] = []
    for table in (ipv4 or {}, ipv6 or {}):
        for iface in sorted(table):
            for a in table[iface] or []:
                try:
                    ip = ipaddress.ip_address(str(a).split("%")[0].split("/")[0])
                except ValueError:
                    continue
                if ip.is_loopback or ip.is_link_local or ip.is_unspecified or str(ip) in out:
                    continue
                out.append(str(ip))
    return out


def with_balancers(settings: Settings, addresses: Iterable[str]) -> Settings:
    """``settings`` whose ``balancers`` also hold ``addresses`` (the inventory's balancer hosts), each
    one not already covered by ``mineru_balancers`` or ``mineru_client_networks``.

    Only when the server's allow-list is on (one of those two set): an open server (none set) stays
    open, so adding a balancer never locks out the clients that reach the servers directly.

    >>> s = Settings(client_networks=["10.0.0.0/24"])
    >>> with_balancers(s, ["10.0.0.7", "10.9.0.1"]).balancers, with_balancers(Settings(), ["10.9.0.1"]).balancers
    (['10.9.0.1/32'], [])
    """
    if not settings.client_networks and not settings.balancers:
        return settings
    nets = [ipaddress.ip_network(n, strict=False) for n in [*settings.balancers, *settings.client_networks]]
    extra: list[str] = []
    for a in addresses:
        net = ipaddress.ip_network(a, strict=False)
        if any(net.version == n.version and net.subnet_of(n) for n in nets) or str(net) in extra:
            continue
        extra.append(str(net))
    if not extra:
        return settings
    return settings.model_copy(update={"balancers": [*settings.balancers, *extra]})
