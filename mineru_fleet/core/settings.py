"""Inventory variables: the one place where every tunable, its default and its meaning live.

Variables that mirror a vLLM flag keep vLLM's name (``tensor_parallel_size``, ``max_model_len``).
``load_settings(data, host)`` validates a host's inventory data and names the host, the variable
and the fix in every error, before any host is touched.

Example::

    >>> s = load_settings({"tensor_parallel_size": 2, "ssh_user": "root"}, host="gpu-1")
    >>> s.tensor_parallel_size
    2
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_MODEL_ID = "OpenDataLab/MinerU2.5-2509-1.2B"

# Data keys that belong to pyinfra or to its connectors, not to us: never "unknown variables".
FOREIGN_PREFIXES = ("ssh_", "winrm_", "docker_", "podman_", "chroot_", "local_", "terraform_", "vagrant_", "sandbox_", "_")
FOREIGN_KEYS = {"controller_ip"}


class Settings(BaseModel):
    """Every variable a user sets in ``group_data`` (or ``--data KEY=VALUE``), with its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- hardware layout -------------------------------------------------------------------
    profile: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: cuda when nvidia-smi answers, else cpu. cuda demands GPUs (the deploy stops if none)."
    )
    gpus: list[int] | None = Field(None, description="GPU indices to use (nvidia-smi numbering); default: all of them.")
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="vLLM -tp. Unset: one server per GPU (data parallel, best for a 1.2B model)."
    )
    # --- vLLM engine -----------------------------------------------------------------------
    gpu_memory_utilization: float = Field(0.5, description="Share of CUDA-visible memory vLLM may use, in (0, 1].")
    max_model_len: int | None = Field(None, ge=1, description="vLLM --max-model-len; unset: the model's own limit.")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="vLLM --kv-cache-memory-bytes: a fixed KV cache size instead of the utilization rule."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM --max-num-seqs; unset: vLLM's 256.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: bfloat16 when every GPU is sm_80+, else float16."
    )
    vllm_use_v1: bool = Field(
        False, description="VLLM_USE_V1. false (V0) is the reference deployment; CPU hosts always run V1."
    )
    enforce_eager: bool = Field(False, description="vLLM --enforce-eager: skip CUDA graph capture (saves ~0.4 GiB, ~9 s).")
    host: str = Field("0.0.0.0", description="vLLM --host: address the API listens on.")
    port: int = Field(30000, description="vLLM --port of the first server; server i listens on port + i.")
    served_model_name: str | None = Field(None, description="vLLM --served-model-name; unset: the model path.")
    cpu_kvcache_space_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU hosts (GiB of KV cache).")
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
        None, description="MODELSCOPE_DOMAIN the hosts use in host mode; unset: modelscope_domain."
    )
    modelscope_ca_bundle: str | None = Field(
        None, description="CA file (on the controller) the client trusts for the hub (REQUESTS_CA_BUNDLE); copied to hosts in host mode."
    )
    modelscope_token_file: str | None = Field(
        None, description="File (mode 0600, on the controller) with the ModelScope token for private models; "
        "else MODELSCOPE_API_TOKEN from the controller's environment. Never put the token itself in inventory data.",
    )
    model_cache_dir: str = Field(
        "~/.cache/mineru-fleet/models", description="Controller cache: <dir>/<model_id>/<revision> (controller mode)."
    )
    model_allow_patterns: list[str] = Field(default_factory=list, description="Only files matching these globs (snapshot_download allow_patterns).")
    model_ignore_patterns: list[str] = Field(default_factory=list, description="Skip files matching these globs (snapshot_download ignore_patterns).")
    model_free_space_margin_mib: int = Field(
        512, ge=0, description="Free space a host must keep beyond the model's size, checked before any byte is written."
    )
    model_keep_revisions: int = Field(2, ge=1, description="Revision folders kept per model on a host (the current one included).")
    model_fetch_python: str = Field(
        "/opt/mineru-fleet/current/venv/bin/python", description="Python with modelscope on the host (host mode)."
    )
    model_local_source: str | None = Field(
        None, description="A model folder on the controller to copy to hosts instead of fetching (no hub: offline tests)."
    )
    model_dir: str | None = Field(
        None, description="Model folder on the host; default /var/lib/mineru-fleet/models/<model_id>/<revision>."
    )
    # --- paths and install -----------------------------------------------------------------
    install_dir: str = Field("/opt/mineru-fleet", description="Releases (venvs) live in <install_dir>/releases/<id>.")
    state_dir: str = Field("/var/lib/mineru-fleet", description="Models, caches and state of the service.")
    service_user: str = Field("mineru", description="System user the server runs as (no login, no root).")
    wheel_find_links: str | None = Field(
        None, description="URL of a wheel directory hosts install from (air-gapped fleets); unset: PyPI."
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
            if any(i < 0 for i in v):
                raise ValueError(f"has a negative index: {v}")
        return v

    @field_validator("extra_env")
    @classmethod
    def _no_secrets_in_env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if any(word in k.upper() for word in ("TOKEN", "API_KEY", "SECRET", "PASSWORD")):
                raise ValueError(f"{k} looks like a secret: secrets never go in inventory data (set it on the controller)")
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


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, Settings.model_fields.keys(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def ours(data: dict[str, Any]) -> dict[str, Any]:
    """Drop the keys pyinfra and its connectors own (ssh_user, _sudo, ...)."""
    return {k: v for k, v in data.items() if not k.startswith(FOREIGN_PREFIXES) and k not in FOREIGN_KEYS}


def load_settings(data: dict[str, Any], host: str) -> Settings:
    """Validate one host's inventory data; raise ``SettingsError`` naming every bad variable."""
    data = ours(data)
    problems = []
    for key in data:
        if key not in Settings.model_fields:
            problems.append(f"unknown variable {key!r}{_suggest(key)}")
    if problems:
        raise SettingsError(host, problems)
    try:
        return Settings(**data)
    except ValidationError as e:
        for err in e.errors():
            var = ".".join(str(x) for x in err["loc"]) or "?"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"variable {var}={err.get('input')!r}: {msg}")
        raise SettingsError(host, problems) from None


def parse_data_args(pairs: list[str]) -> dict[str, Any]:
    """``["tensor_parallel_size=2", "gpus=0,1"]`` -> typed values (JSON where it parses, else text)."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SettingsError("--data", [f"{pair!r} is not KEY=VALUE"])
        key = key.strip()
        field = Settings.model_fields.get(key)
        if field is not None and "list[int]" in str(field.annotation) and not raw.startswith("["):
            raw = "[" + raw + "]"
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
