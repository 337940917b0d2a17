"""Compile classes: which servers may share one compiled cache (pure: plan + release + model + hardware in, key out).

A server's first start compiles (torch.compile / inductor: 30-40 s of the 85-105 s a cold CPU start takes in
the sandbox; more on CUDA with CUDA graphs). Two servers of one *compile class* would compile the same thing,
so the first one's caches are copied to the others before they start (``roles/compilecache.py``). The class key
is a digest of everything the compiled code depends on, a superset of what vLLM 0.10.2 and torch's inductor key
their own caches on (read in their sources, the builds ``locks/`` pins):

- vLLM (``vllm/compilation/backends.py``, CUDA's PIECEWISE level): the cache folder is
  ``VLLM_CACHE_ROOT/torch_compile_cache/<md5 of factors>``, factors = ``envs.compute_hash()`` (a list of
  ``VLLM_*`` variables), ``VllmConfig.compute_hash()`` (vLLM version, V1, the model config: model *path*, dtype,
  revision, max_model_len, the HF config; cache, parallel, scheduler, device, load and compilation configs),
  the source files Dynamo traced, and the compiler's hash (inductor's ``CacheBase.get_system()``: GPU *name*
  and CUDA version, triton's key, ``torch_key()``). No driver, no compute capability but through the name.
- On CPU (``vllm/platforms/cpu.py``) vLLM uses ``DYNAMO_ONCE`` with the plain inductor backend: only inductor's
  own caches (``TORCHINDUCTOR_CACHE_DIR``). Its FX-graph key (``torch/_inductor/codecache.py``,
  ``FxGraphHashDetails``) holds the graph, inductor's config, ``torch_key()`` and ``get_system()`` -- which on a
  host without CUDA is *empty*: no processor. The C++ kernels it loads are keyed by their source and the
  compiler command line, which says ``-march=native`` (so a kernel built on one processor can hold instructions
  another lacks) and the generated source bakes ``#pragma omp parallel num_threads(N)`` with the compiling
  host's thread count. So neither cache tells two processors, or two CPU counts, apart: this key must.

Hence the key covers: the release (the lock digest: the exact vLLM, torch, triton and IPEX builds, so
``torch_key`` and the traced sources), the model (id, revision, and the digest of the hub's file list, so the
HF config), every server argument and environment variable but the few that only place the server on the network
(``NOT_IN_GRAPH_*``), the cache folder's path, and the hardware: processor (vendor, family, model, name, the
digest of *all* its flags), the CPUs the server may use, OS and gcc, and on CUDA each of the server's GPUs
(name, compute capability, driver). A superset errs one way only: two hosts that could have shared a cache
compile each their own; a cache is never used by a server of another class.

Example::

    >>> cls = compile_class(plan.servers[0], profile="cpu", release="cpu-2e92e020cc6d",
    ...                     model={"id": "m", "revision": "v1", "files": "ab12..."}, hardware=hw)
    >>> cls.key           # 20 hex digits: <state_dir>/cache/0/compile/<key>/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from mineru_fleet.core.planner import Plan, Row, ServerPlan

FORMAT = 1
#: arguments that only place the server on the network or name it to clients: not in any compiled graph
NOT_IN_GRAPH_ARGS = ("--host", "--port", "--served-model-name")
#: environment that says where the server talks or keeps files (the cache paths are set from the key itself)
NOT_IN_GRAPH_ENV = ("VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HOME", "XDG_CACHE_HOME",
                    "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@dataclasses.dataclass(frozen=True)
class CompileClass:
    key: str
    parts: dict
    seedable: bool  # False when the host's hardware is unknown: its caches are neither sent nor taken

    def class_json(self) -> str:
        """``class.json`` of the class folder (the same bytes on every host of the class)."""
        return json.dumps({"format": FORMAT, "key": self.key, "parts": self.parts}, sort_keys=True, indent=1) + "\n"


def class_key(parts: dict) -> str:
    """The first 20 hex digits of the SHA-256 of the parts' canonical JSON (== onhost/compilecache.py's)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def server_hardware(hardware: dict, gpus: list[str] | None) -> dict:
    """What of the host's hardware a server's compiled code depends on (== onhost/compilecache.py ``for_server``)."""
    out = {k: v for k, v in hardware.items() if k != "gpus"}
    if gpus:
        by_index = {g.get("index"): g for g in hardware.get("gpus") or []}
        out["gpus"] = [{k: v for k, v in (by_index.get(i) or {"missing": i}).items() if k != "index"} for i in gpus]
    return out


def server_gpus(sv: ServerPlan) -> list[str]:
    return [g for g in (sv.cuda_visible_devices or "").split(",") if g]


def graph_args(args: list[str]) -> list[str]:
    """``args`` without the ``NOT_IN_GRAPH_ARGS`` flags and their values (``--flag value`` or ``--flag=value``)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in NOT_IN_GRAPH_ARGS:
            skip = True
            continue
        if a.split("=", 1)[0] in NOT_IN_GRAPH_ARGS:
            continue
        out.append(a)
    return out


def cache_root(state_dir: str, server: str) -> str:
    return f"{state_dir}/cache/{server}"


def compile_class(sv: ServerPlan, *, profile: str, release: str, model: dict, hardware: dict | None,
                  state_dir: str) -> CompileClass:
    """The compile class of server ``sv``. ``model``: ``{"id", "revision", "files"}`` (``files``: the digest of the
    hub's file list); ``hardware``: the ``CompileHardware`` fact (None or empty: unknown, never seeded)."""
    parts = {
        "format": FORMAT,
        "profile": profile,
        "release": release,
        "model": dict(model),
        "args": graph_args(sv.args),
        "env": {k: v for k, v in sorted(sv.env.items()) if k not in NOT_IN_GRAPH_ENV},
        "cache_root": cache_root(state_dir, sv.name),
        "hardware": server_hardware(hardware, server_gpus(sv)) if hardware else {"unknown": True},
    }
    return CompileClass(class_key(parts), parts, bool(hardware))


def class_dir(state_dir: str, server: str, key: str) -> str:
    """``<state_dir>/cache/<server>/compile/<key>``: the one folder the server's compile caches go to."""
    return f"{cache_root(state_dir, server)}/compile/{key}"


def with_compile_classes(plan: Plan, classes: dict[str, CompileClass], state_dir: str) -> Plan:
    """``plan`` with each server's compile caches (vLLM, inductor, triton) in its class folder, and a row saying so."""
    servers = []
    for sv in plan.servers:
        cls = classes[sv.name]
        d = class_dir(state_dir, sv.name, cls.key)
        env = dict(sv.env)
        env.update({"VLLM_CACHE_ROOT": f"{d}/vllm", "TORCHINDUCTOR_CACHE_DIR": f"{d}/inductor", "TRITON_CACHE_DIR": f"{d}/triton"})
        hw = cls.parts["hardware"]
        what = ("hardware unknown: compiles its own, never shared" if not cls.seedable else
                f"{hw.get('cpu', {}).get('model name') or hw.get('arch')}, {hw.get('cpus')} CPUs"
                + "".join(f", {g.get('name')} cc {g.get('compute_cap')} driver {g.get('driver')}" for g in hw.get("gpus") or []))
        row = Row("compile class", cls.key, f"release, model revision, graph settings and hardware ({what}): "
                  "servers of one class share one compiled cache (mineru_compile_cache_seed)")
        servers.append(dataclasses.replace(sv, env=env, rows=[*sv.rows, row]))
    return dataclasses.replace(plan, servers=servers, compile_classes=dict(classes))
