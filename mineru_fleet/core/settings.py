"""Inventory variables: the one place where every tunable, its default and its meaning live.

Every inventory variable of ours is prefixed ``mineru_`` so one inventory can carry the data of
many deploys: ``mineru_tensor_parallel_size``, ``mineru_port``. After the prefix, variables that
mirror a vLLM flag keep vLLM's name (``mineru_max_model_len``). The fields of ``Settings`` are the
names after the prefix; ``load_settings`` maps the inventory names onto them, so the code reads
``settings.max_model_len``. Keys without the prefix belong to other deploys (or pyinfra) and pass;
an unknown ``mineru_*`` key is an error with a did-you-mean; an unprefixed key equal to one of our
old names gets a warning (``inventory_warnings``).

``load_settings(data, host)`` validates a host's inventory data and names the host, the variable
and the fix in every error, before any host is touched.

Example::

    >>> s = load_settings({"mineru_tensor_parallel_size": 2, "ssh_user": "root"}, host="gpu-1")
    >>> s.tensor_parallel_size
    2
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_MODEL_ID = "OpenDataLab/MinerU2.5-2509-1.2B"

#: Every inventory variable of ours starts with this; any other key belongs to someone else.
PREFIX = "mineru_"

# ------------------------------------------------------------------------------------------------
# What a value may be: one rule per kind, applied to every variable of that kind (issue 10).
# Values that reach a host (paths, user, names, args) are refused here, in preflight, before any
# host changes; the roles and templates quote and escape them again anyway (units.py, roles/).
# ------------------------------------------------------------------------------------------------

#: Host paths: absolute, normalised, and only these characters (no whitespace, quotes, shell or
#: systemd specials such as ``%`` ``$`` ``;`` ``\``): safe in a unit file, an env file and a shell word.
HOST_PATH = re.compile(r"/[A-Za-z0-9._+@-]+(?:/[A-Za-z0-9._+@-]+)*")
#: useradd's default NAME_REGEX, 32 characters at most.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Accounts that are never ours, whatever the host says (the host fact refuses every other account we did not make).
SYSTEM_ACCOUNTS = frozenset({"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
                             "www-data", "backup", "list", "irc", "nobody", "sshd", "messagebus", "adm", "systemd-network"})
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: ModelScope ids: ``owner/name``, each part starting with a letter or digit, then letters, digits, ``. _ -``.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: ModelScope revisions: tags (v1.0.0), branches (master) and commit ids.
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,255}")
DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
URL = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?(/[A-Za-z0-9._~/%+@=-]*)?")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
GLOB = re.compile(r"[A-Za-z0-9._*?/\[\]!+@-]+")
#: mineru-vllm-server flags the plan sets itself (their inventory variable says so).
PLANNED_FLAGS = {"--model": "the model role places the model", "--host": "mineru_host", "--port": "mineru_port",
                 "--served-model-name": "mineru_served_model_name", "--tensor-parallel-size": "mineru_tensor_parallel_size",
                 "--gpu-memory-utilization": "mineru_gpu_memory_utilization", "--dtype": "mineru_dtype"}
def looks_secret(name: str) -> bool:
    """A variable or flag name that carries a secret: ``HF_TOKEN``, ``--api-key``, ``DB_PASSWORD``; not a count or
    a tool that merely contains the letters (``--max-num-batched-tokens``, ``--tokenizer``).

    >>> [looks_secret(n) for n in ("HF_TOKEN", "--api-key", "--max-num-batched-tokens", "--tokenizer", "CREDENTIALS")]
    [True, True, False, False, True]
    """
    words = [w for w in re.split(r"[^A-Z0-9]+", name.upper()) if w]
    joined = "_".join(words)
    return any(w in ("TOKEN", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "APIKEY") for w in words) or any(
        pair in joined for pair in ("API_KEY", "PRIVATE_KEY", "ACCESS_KEY"))
#: Variables whose values are never repeated in an error (they may carry a secret the user pasted by mistake).
NO_ECHO = frozenset({"extra_env", "extra_args"})


def host_path_problem(v: str) -> str | None:
    """Why ``v`` is not a host path we accept (None when it is)."""
    if not isinstance(v, str) or not v.startswith("/"):
        return "must be an absolute path (starting with /)"
    if CONTROL.search(v) or any(c.isspace() for c in v):
        return "must not contain whitespace or control characters"
    if posixpath.normpath(v) in ("/", "//"):
        return "must not be / itself: give a folder of its own, e.g. /opt/mineru-fleet"
    if posixpath.normpath(v) != v or v.endswith("/"):
        return f"must be normalised (no //, /./, /../ or trailing /): write {posixpath.normpath(v)!r}"
    if not HOST_PATH.fullmatch(v):
        return "may contain only letters, digits and . _ + @ - between the slashes (no quotes, $, %, ;, \\ or spaces)"
    return None


def ip_or_dns_name(v: str) -> bool:
    """An IP address (v4 or v6) or a DNS name."""
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return bool(DNS_NAME.fullmatch(v))


def host_port_problem(v: str) -> str | None:
    """Why ``v`` is not ``HOST[:PORT]`` (a DNS name, an IPv4 address or [IPv6])."""
    if "/" in v or any(c.isspace() for c in v) or CONTROL.search(v):
        return "is not HOST[:PORT]: no scheme (https is implied), path, spaces or control characters"
    host, port = v, None
    m = re.fullmatch(r"\[([^\]]*)\](?::(\d{1,5}))?", v)
    if m:
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            return "is not HOST[:PORT]: the bracketed part is not an IPv6 address"
        port = m.group(2)
    else:
        host, sep, port = v.rpartition(":") if ":" in v else (v, "", None)
        if not DNS_NAME.fullmatch(host or ""):
            return "is not HOST[:PORT] (a DNS name or IPv4 address, an optional :PORT; no scheme, path or spaces)"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "has a port outside 1..65535"
    return None


class Settings(BaseModel):
    """Every variable a user sets in ``group_data`` (or ``--data KEY=VALUE``), with its default.

    The inventory name of field ``x`` is ``mineru_x`` (``var("x")``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- hardware layout -------------------------------------------------------------------
    profile: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: cuda when nvidia-smi answers, else cpu. cuda demands GPUs (the deploy stops if none)."
    )
    gpus: list[int] | None = Field(None, description="GPU indices to use (nvidia-smi numbering); default: all of them.")
    tensor_parallel_size: int | None = Field(
        None, ge=1, le=64, description="vLLM -tp. Unset: one server per GPU (data parallel, best for a 1.2B model)."
    )
    # --- vLLM engine -----------------------------------------------------------------------
    gpu_memory_utilization: float = Field(0.5, description="Share of CUDA-visible memory vLLM may use, in (0, 1].")
    max_model_len: int | None = Field(None, ge=1, le=1 << 24, description="vLLM --max-model-len; unset: the model's own limit.")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1 << 20, le=1 << 44, description="vLLM --kv-cache-memory-bytes: a fixed KV cache size instead of the utilization rule."
    )
    max_num_seqs: int | None = Field(None, ge=1, le=1 << 16, description="vLLM --max-num-seqs; unset: vLLM's 256.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: bfloat16 when every GPU is sm_80+, else float16."
    )
    vllm_use_v1: bool = Field(
        False, description="VLLM_USE_V1. false (V0) is the reference deployment; CPU hosts always run V1."
    )
    enforce_eager: bool = Field(False, description="vLLM --enforce-eager: skip CUDA graph capture (saves ~0.4 GiB, ~9 s). "
                                  "CUDA hosts only: refused on CPU hosts (vLLM 0.10.2's CPU build exits at start with it).")
    host: str = Field("0.0.0.0", description="vLLM --host: address the API listens on.")
    client_networks: list[str] = Field(
        default_factory=list, description="Networks (CIDR) whose clients may reach the API, e.g. ['10.20.0.0/16']. Set (or "
        "mineru_balancers set): the unit gets IPAddressDeny=any plus IPAddressAllow= loopback, the host's own address, these "
        "and the balancers. Unset: open to any address (warning api-open).",
    )
    balancers: list[str] = Field(
        default_factory=list, description="Load balancers (IP or CIDR) in front of the servers: allowed like mineru_client_networks."
    )
    port: int = Field(30000, description="vLLM --port of the first server; server i listens on port + i.")
    served_model_name: str | None = Field(
        None, description="vLLM --served-model-name; unset: the model id (one name across revisions, so a fleet in the "
        "middle of a model rollout answers every client).",
    )
    cpu_kvcache_space_gib: int = Field(1, ge=1, le=1 << 14, description="VLLM_CPU_KVCACHE_SPACE on CPU hosts (GiB of KV cache).")
    extra_args: list[str] = Field(default_factory=list, description="Extra mineru-vllm-server arguments, appended as is.")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the server.")
    # --- model -----------------------------------------------------------------------------
    model_id: str = Field(DEFAULT_MODEL_ID, description="ModelScope model id.")
    model_revision: str = Field(
        "master", description="Model revision: pin a tag or commit (a branch such as master moves: warning unpinned-model-revision)."
    )
    model_fetch_mode: Literal["controller", "host"] = Field(
        "controller",
        description="controller: snapshot_download once on the controller, then copy to hosts (hub traffic 1x per fleet); "
        "host: every host runs snapshot_download itself.",
    )
    modelscope_domain: str | None = Field(
        None, description="MODELSCOPE_DOMAIN (HOST[:PORT], https) the controller fetches from; unset: modelscope.cn."
    )
    modelscope_host_domain: str | None = Field(
        None, description="MODELSCOPE_DOMAIN the hosts use in host mode; unset: mineru_modelscope_domain."
    )
    modelscope_ca_bundle: str | None = Field(
        None, description="CA file (on the controller) the client trusts for the hub (REQUESTS_CA_BUNDLE); copied to hosts in host mode."
    )
    modelscope_token_file: str | None = Field(
        None, description="File (mode 0600, on the controller) with the ModelScope token for private models; "
        "else MODELSCOPE_API_TOKEN from the controller's environment. Never put the token itself in inventory data.",
    )
    modelscope_keep_token_file: bool = Field(
        False, description="Host mode: keep the token on the hosts (/etc/mineru-fleet/private/modelscope-token, 0600) after the "
        "download; default: removed right after it.",
    )
    model_cache_dir: str = Field(
        "~/.cache/mineru-fleet/models", description="Controller cache: <dir>/<model_id>/<revision> (controller mode)."
    )
    model_allow_patterns: list[str] = Field(default_factory=list, description="Only files matching these globs (snapshot_download allow_patterns).")
    model_ignore_patterns: list[str] = Field(default_factory=list, description="Skip files matching these globs (snapshot_download ignore_patterns).")
    model_free_space_margin_mib: int = Field(
        512, ge=0, le=1 << 24, description="Free space a host must keep beyond the model's size, checked before any byte is written."
    )
    model_verify: Literal["record", "full"] = Field(
        "record", description="How each run checks a host's model folder. record: hash only the files whose size, mtime, "
        "ctime or inode differ from the verified-files record written when the revision was installed (a no-op run "
        "hashes nothing; no record, or a changed file, falls back to hashing); full: hash every file on every run.",
    )
    model_keep_revisions: int = Field(2, ge=1, le=100, description="Revision folders kept per model on a host (the current one included).")
    model_fetch_python: str = Field(
        "/opt/mineru-fleet/current/venv/bin/python", description="Python with modelscope on the host (host mode)."
    )
    model_local_source: str | None = Field(
        None, description="A model folder on the controller to copy to hosts instead of fetching (no hub: offline tests)."
    )
    model_dir: str | None = Field(
        None, description="Model folder on the host; default /var/lib/mineru-fleet/models/<model_id>/<revision>."
    )
    # --- compile cache seeding (roles/compilecache.py) ----------------------------------------
    compile_cache_seed: bool = Field(
        True, description="Share compiled caches within a compile class (release, model revision, graph settings, "
        "processor/GPU, CPU count, OS): the first server of a class compiles, its caches go to the controller and to every "
        "other host of the class before its server starts. false: every server compiles its own.",
    )
    compile_cache_dir: str = Field(
        "~/.cache/mineru-fleet/compile-cache", description="Controller store of the seeds: <dir>/<class key>/seed.tar.gz."
    )
    compile_cache_keep: int = Field(
        3, ge=1, le=100, description="Class folders kept per server on a host, the most recently finished first (those the "
        "servers' env files and the current deployment record name are always kept): a rollback to the previous class starts warm.",
    )
    # --- paths and install -----------------------------------------------------------------
    install_dir: str = Field("/opt/mineru-fleet", description="Releases (venvs) live in <install_dir>/releases/<id>.")
    state_dir: str = Field("/var/lib/mineru-fleet", description="Models, caches and state of the service.")
    service_user: str = Field("mineru", description="System user the server runs as (no login, no root).")
    wheel_find_links: str | None = Field(
        None, description="URL of a wheel directory hosts install from (air-gapped fleets); unset: PyPI."
    )
    runtime_lock: str | None = Field(
        None, description="Pinned requirements file (on the controller, every pin with --hash) the release is installed from; "
        "unset: the project's locks/<profile>.txt. Another lock is another release folder; set it back to roll back.",
    )
    # --- balancer (HAProxy on the hosts of the inventory group `balancers`, roles/balancer.py) ---
    balancer_bind: str = Field("0.0.0.0", description="Balancer hosts: address HAProxy listens on for clients (IP, or :: for all).")
    balancer_port: int = Field(8000, description="Balancer hosts: port HAProxy listens on; requests go to every planned server (leastconn).")
    balancer_server_timeout_s: int = Field(
        600, ge=1, le=86400, description="Balancer: HAProxy `timeout server`, the longest a server may stay silent on a request "
        "(a MinerU page takes seconds to minutes)."
    )
    balancer_client_timeout_s: int = Field(
        600, ge=1, le=86400, description="Balancer: HAProxy `timeout client` (a client waiting for a long page is silent meanwhile)."
    )
    balancer_connect_timeout_s: int = Field(5, ge=1, le=3600, description="Balancer: HAProxy `timeout connect` to a server.")
    balancer_check_inter_ms: int = Field(
        2000, ge=100, le=3600000, description="Balancer: milliseconds between two health checks (GET /health) of a server (`inter`)."
    )
    balancer_check_fall: int = Field(3, ge=1, le=1000, description="Balancer: failed checks in a row that take a server out (`fall`).")
    balancer_check_rise: int = Field(2, ge=1, le=1000, description="Balancer: good checks in a row that put a server back (`rise`).")
    balancer_server_maxconn: int | None = Field(
        None, ge=1, le=1 << 20, description="Balancer: requests sent to one server at once (`maxconn`; more wait in HAProxy's "
        "queue); unset: no limit, vLLM queues them itself."
    )
    balancer_backend_address: str | None = Field(
        None, description="Serving hosts: the address the balancers reach this host's servers at (IP or DNS name); unset: "
        "the inventory's ssh_hostname, else the host's inventory name."
    )

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _util_range(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be in (0, 1], e.g. 0.5 for half of the GPU's memory")
        return v

    @field_validator("port")
    @classmethod
    def _port_range(cls, v: int) -> int:
        if not 1024 <= v <= 65535:
            raise ValueError("must be 1024..65535 (the server runs unprivileged and cannot bind below 1024)")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus_unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("is empty: leave it unset to use every GPU, or list indices like [0, 1]")
            if len(set(v)) != len(v):
                raise ValueError(f"lists a GPU twice: {v}")
            if any(i < 0 or i > 1023 for i in v):
                raise ValueError(f"has an index outside 0..1023: {v}")
        return v

    @field_validator("extra_env")
    @classmethod
    def _env_keys_values(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not ENV_KEY.fullmatch(k):
                raise ValueError(f"key {k!r} is not an environment variable name: use letters, digits and _ "
                                 "(not starting with a digit), e.g. {\"OMP_NUM_THREADS\": \"4\"}")
            if looks_secret(k):
                raise ValueError(f"{k} looks like a secret: secrets never go in inventory data (set it on the controller)")
            if k == "MINERU_VLLM_ARGS":
                raise ValueError("MINERU_VLLM_ARGS is written by the plan: use mineru_extra_args for extra server arguments")
            if CONTROL.search(val):
                raise ValueError(f"the value of {k} contains a control character (newline, tab, ...): one line of printable text only")
        return v

    @field_validator("install_dir", "state_dir", "model_fetch_python")
    @classmethod
    def _host_path(cls, v: str) -> str:
        problem = host_path_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("model_dir")
    @classmethod
    def _model_dir(cls, v: str | None) -> str | None:
        problem = None if v is None else host_path_problem(v)
        if problem:
            raise ValueError(problem)
        if v is not None and v.count("/") < 2:
            raise ValueError("must be a folder inside a folder, e.g. /srv/models/mineru (its revisions go next to it)")
        return v

    @field_validator("model_cache_dir", "modelscope_ca_bundle", "modelscope_token_file", "model_local_source", "runtime_lock",
                     "compile_cache_dir")
    @classmethod
    def _controller_path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or CONTROL.search(v)):
            raise ValueError("must be a path on the controller without control characters")
        return v

    @field_validator("service_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_NAME.fullmatch(v):
            raise ValueError("must be a user name of lowercase letters, digits, _ and - (starting with a letter or _, "
                             "32 characters at most), e.g. 'mineru'")
        if v in SYSTEM_ACCOUNTS:
            raise ValueError(f"{v!r} is a system account: the server runs as a dedicated account the deploy creates, e.g. 'mineru'")
        return v

    @field_validator("balancer_port")
    @classmethod
    def _balancer_port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError("must be 1..65535, e.g. 8000")
        return v

    @field_validator("host", "balancer_bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        if not ip_or_dns_name(v):
            raise ValueError("must be an IP address (e.g. 0.0.0.0, 127.0.0.1, ::) or a host name, nothing else")
        return v

    @field_validator("balancer_backend_address")
    @classmethod
    def _backend_address(cls, v: str | None) -> str | None:
        if v is not None and not ip_or_dns_name(v):
            raise ValueError("must be an IP address or a DNS name the balancers resolve, e.g. 10.0.0.5 or gpu-1.internal")
        return v

    @field_validator("client_networks", "balancers")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        out = []
        for n in v:
            try:
                out.append(str(ipaddress.ip_network(n, strict=False)))
            except (ValueError, TypeError):
                raise ValueError(f"{str(n)[:60]!r} is not an IP address or network, e.g. '10.20.0.0/16' or '192.0.2.10'") from None
        return out

    @field_validator("modelscope_domain", "modelscope_host_domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        problem = None if v is None else host_port_problem(v)
        if problem:
            raise ValueError(problem + ", e.g. 'www.modelscope.cn' or 'hub.internal:8443'")
        return v

    @field_validator("wheel_find_links")
    @classmethod
    def _find_links(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("/"):
            problem = host_path_problem(v.rstrip("/") or v)
            if problem:
                raise ValueError(f"a folder on the host {problem}")
            return v
        m = URL.fullmatch(v)
        if not m:
            raise ValueError("must be an http(s) URL (letters, digits and . _ ~ / % + @ = - in its path; no quotes, "
                             "spaces, ; or $) or an absolute folder on the host, e.g. 'http://10.0.0.1:8000/wheels/'")
        if m.group(3) and not 1 <= int(m.group(3)) <= 65535:
            raise ValueError("has a port outside 1..65535")
        return v

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, v: str) -> str:
        if not MODEL_ID.fullmatch(v) or ".." in v:
            raise ValueError("must be a ModelScope id OWNER/NAME (letters, digits, . _ -), e.g. 'OpenDataLab/MinerU2.5-2509-1.2B'")
        return v

    @field_validator("model_revision")
    @classmethod
    def _revision(cls, v: str) -> str:
        if not REVISION.fullmatch(v) or ".." in v:
            raise ValueError("must be a ModelScope tag, branch or commit (letters, digits, . _ -), e.g. 'v1.0.0'")
        return v

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, v: str | None) -> str | None:
        if v is not None and not SERVED_NAME.fullmatch(v):
            raise ValueError("may contain only letters, digits and . _ / : @ + - (no spaces or quotes), e.g. 'mineru2.5'")
        return v

    @field_validator("model_allow_patterns", "model_ignore_patterns")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for p in v:
            if not GLOB.fullmatch(p) or p.startswith("-"):
                raise ValueError(f"pattern {p!r} may contain only letters, digits and . _ * ? / [ ] ! + @ - "
                                 "(no spaces or quotes; not starting with -), e.g. '*.safetensors'")
        return v

    @field_validator("extra_args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            if not a:
                raise ValueError(f"item {i} is empty: drop it")
            if CONTROL.search(a) or "\\" in a:
                raise ValueError(f"item {i} contains a control character or a backslash: one argument of printable text")
            flag = a.split("=", 1)[0]
            if flag.startswith("--") and any(c.isspace() for c in a) and "=" not in a and "{" not in a:
                raise ValueError(f"item {i} holds several words: each item is one argument, write them as separate items")
            if flag in PLANNED_FLAGS:
                raise ValueError(f"item {i} sets {flag}, which the plan sets: use {PLANNED_FLAGS[flag]}")
            if flag in ("--api-key",) or looks_secret(flag):
                raise ValueError(f"item {i} passes a secret ({flag}): secrets never go in inventory data")
        return v

    @property
    def asks_for_gpus(self) -> bool:
        return self.profile == "cuda" or self.gpus is not None


DEFAULTS: dict[str, Any] = {name: f.get_default(call_default_factory=True) for name, f in Settings.model_fields.items()}


class SettingsError(ValueError):
    """Bad inventory data; the message names the host, the variable and the fix."""

    def __init__(self, host: str, problems: list[str]):
        self.host = host
        self.problems = problems
        super().__init__(f"{host}: " + "; ".join(problems))


def _shown(field: str, value: Any) -> str:
    """``=<value>`` for an error message: repr (control characters escaped), shortened; nothing for
    variables that may hold a secret pasted by mistake (the message names the variable, never the value)."""
    if field in NO_ECHO:
        return ""
    text = repr(value)
    return "=" + (text if len(text) <= 80 else text[:77] + "...")


def var(name: str) -> str:
    """The inventory name of a ``Settings`` field: ``var("port") == "mineru_port"``."""
    return PREFIX + name


INVENTORY_NAMES: tuple[str, ...] = tuple(var(n) for n in Settings.model_fields)


def to_inventory(data: dict[str, Any]) -> dict[str, Any]:
    """``{"port": 1}`` -> ``{"mineru_port": 1}``: our field names prefixed, other keys kept as they are."""
    return {(var(k) if k in Settings.model_fields else k): v for k, v in data.items()}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, INVENTORY_NAMES, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def ours(data: dict[str, Any]) -> dict[str, Any]:
    """Our keys only (``mineru_*``), prefix kept; everything else belongs to pyinfra or another deploy."""
    return {k: v for k, v in data.items() if isinstance(k, str) and k.startswith(PREFIX)}


def inventory_warnings(data: dict[str, Any]) -> list[str]:
    """Unprefixed keys equal to one of our (old) variable names: probably meant for us, but left alone."""
    return [
        f"inventory key {k!r} is not read by mineru-fleet (ours are prefixed): did you mean {var(k)}? "
        "(left alone in case another deploy uses it)"
        for k in data
        if isinstance(k, str) and k in Settings.model_fields
    ]


def load_settings(data: dict[str, Any], host: str) -> Settings:
    """Validate one host's inventory data; raise ``SettingsError`` naming every bad variable."""
    problems = []
    fields: dict[str, Any] = {}
    for key, value in ours(data).items():
        name = key[len(PREFIX):]
        if name not in Settings.model_fields:
            problems.append(f"unknown variable {key!r}{_suggest(key)}")
        else:
            fields[name] = value
    if problems:
        raise SettingsError(host, problems)
    try:
        return Settings(**fields)
    except ValidationError as e:
        for err in e.errors():
            loc = [str(x) for x in err["loc"]]
            name = var(loc[0]) if loc else "?"
            where = ".".join([name, *loc[1:]])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"variable {where}{_shown(loc[0] if loc else '', err.get('input'))}: {msg}")
        raise SettingsError(host, problems) from None


def parse_data_args(pairs: list[str]) -> dict[str, Any]:
    """``["mineru_tensor_parallel_size=2", "gpus=0,1"]`` -> ``{"mineru_tensor_parallel_size": 2, "mineru_gpus": [0, 1]}``.

    Keys are our inventory names; the name after the prefix (vLLM's flag name) is accepted too.
    Every key is ours here (the command line has no other deploy's data), so an unknown one is
    reported by ``load_settings`` with a did-you-mean. Values: JSON where it parses, else text."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError("--data", [f"{pair!r} is not KEY=VALUE (e.g. --data mineru_max_model_len=16384)"])
        key = key.strip()
        if not key.startswith(PREFIX):
            key = var(key)
        field = Settings.model_fields.get(key[len(PREFIX):])
        if field is not None and "list[int]" in str(field.annotation) and not raw.startswith("["):
            raw = "[" + raw + "]"
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# ------------------------------------------------------------------------------------------------
# documentation generated from the fields (README's table, inventory/group_data/all.py), so neither can drift
# ------------------------------------------------------------------------------------------------


def variable_table() -> str:
    """The README's "Inventory variables" table (markdown), one row per variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.get_default(call_default_factory=True)
        rows.append(f"| `{var(name)}` | `{default!r}` | {f.description} |")
    return "\n".join(rows) + "\n"


GROUP_DATA_HEADER = '''"""Inventory variables for every host: all of them, commented out, with their defaults.

GENERATED from mineru_fleet/core/settings.py (README "Inventory variables" has the same list):
regenerate with `uv run python -m mineru_fleet.core.settings group-data > inventory/group_data/all.py`
(a unit test fails when this file and settings.py differ).

Uncomment and change what you need, here or in group_data/<group>.py or per host. Our variables
start with `mineru_`; keys without the prefix belong to other deploys and are left alone; an
unknown `mineru_*` key stops the deploy with the closest known name.
"""
'''


def group_data_template() -> str:
    """inventory/group_data/all.py: every variable commented out with its default and meaning."""
    lines = [GROUP_DATA_HEADER]
    for name, f in Settings.model_fields.items():
        default = f.get_default(call_default_factory=True)
        lines.append(f"# {f.description}")
        lines.append(f"# {var(name)} = {default!r}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # uv run python -m mineru_fleet.core.settings table|group-data
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("table", "group-data"):
        sys.exit("usage: python -m mineru_fleet.core.settings table|group-data")
    sys.stdout.write(variable_table() if what == "table" else group_data_template())
