"""What the planner needs to know about the served model, and where each figure comes from.

Figures come from the model's own files when the controller has them (``from_model_dir``), else
from the built-in profile of MinerU2.5-2509-1.2B, whose numbers are taken from the reference
startup log. A figure nobody knows stays ``None`` and is shown as unknown.

Example::

    >>> m = MINERU25_PROFILE
    >>> round(m.weight_bytes / 2**30, 2)
    2.18
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

GIB = 1024**3

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelFacts:
    name: str
    weight_bytes: int | None = None
    num_layers: int | None = None
    num_kv_heads: int | None = None
    head_size: int | None = None
    max_position_embeddings: int | None = None
    mm_worst_case_tokens: int | None = None
    checkpoint_dtype: str | None = None
    # Memory vLLM needs beside weights and KV cache, per GPU (measured, not derivable from files).
    non_torch_bytes: int | None = None
    activation_peak_bytes: int | None = None
    cuda_graph_bytes: int | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def kv_bytes_per_token(self, tp: int, dtype: str) -> int | None:
        """K and V of one token on one GPU: 2 x layers x KV heads per GPU x head size x dtype bytes."""
        if None in (self.num_layers, self.num_kv_heads, self.head_size):
            return None
        heads_per_gpu = max(1, self.num_kv_heads // tp)  # vLLM replicates KV heads when tp > heads
        return 2 * self.num_layers * heads_per_gpu * self.head_size * DTYPE_BYTES.get(dtype, 2)


REFERENCE_LOG = "reference startup log (2x RTX 2080 Ti, TP=2, float16)"

MINERU25_PROFILE = ModelFacts(
    name="OpenDataLab/MinerU2.5-2509-1.2B",
    weight_bytes=int(2 * 1.09 * GIB),
    num_layers=24,
    num_kv_heads=2,
    head_size=64,
    max_position_embeddings=32768,
    mm_worst_case_tokens=18225,
    checkpoint_dtype="bfloat16",
    non_torch_bytes=int(0.13 * GIB),
    activation_peak_bytes=int(1.84 * GIB),
    cuda_graph_bytes=int(0.38 * GIB),
    sources={
        "weight_bytes": f"{REFERENCE_LOG}: 1.09 GiB per GPU at TP=2",
        "num_layers": "MinerU2.5 paper (arXiv 2509.22186): Qwen2-0.5B decoder, 24 layers",
        "num_kv_heads": "MinerU2.5 paper: Qwen2-0.5B decoder, 2 KV heads",
        "head_size": "MinerU2.5 paper: Qwen2-0.5B decoder, head size 64",
        "max_position_embeddings": (
            "context length 32768 (Xinference's model list for MinerU2.5-2509-1.2B); config.json field"
            " max_position_embeddings, which vLLM reads for its default --max-model-len (Qwen2-VL's 32768,"
            " QwenLM/Qwen3-VL issue 200)"
        ),
        "mm_worst_case_tokens": f"{REFERENCE_LOG}: multimodal worst case 18225 tokens",
        "non_torch_bytes": f"{REFERENCE_LOG}: 0.13 GiB (estimate; calibrate with diagnose)",
        "activation_peak_bytes": f"{REFERENCE_LOG}: 1.84 GiB (estimate; calibrate with diagnose)",
        "cuda_graph_bytes": f"{REFERENCE_LOG}: 0.38 GiB, ~9 s capture",
    },
)


def builtin_profile(model_id: str) -> ModelFacts:
    """The built-in figures for MinerU2.5; for any other model id every figure is unknown."""
    if model_id.lower() == MINERU25_PROFILE.name.lower():
        return MINERU25_PROFILE
    return ModelFacts(name=model_id)


def with_manifest_weights(model: ModelFacts, manifest: dict | None) -> ModelFacts:
    """``model`` with ``weight_bytes`` from a hub file list (the sizes of its ``*.safetensors``), if it has any."""
    sizes = [e["size"] for e in (manifest or {}).get("files", []) if str(e.get("path", "")).endswith(".safetensors")]
    if not sizes:
        return model
    return replace(model, weight_bytes=sum(sizes), sources={**model.sources, "weight_bytes": "*.safetensors sizes in the hub's file list"})


def from_model_dir(path: Path, model_id: str | None = None) -> ModelFacts:
    """Read a model folder (config.json, *.safetensors, preprocessor_config.json).

    Memory figures that files cannot tell (non-torch, activation peak) come from the built-in
    profile when the model is MinerU2.5, else stay unknown.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json: not a model folder")
    cfg = json.loads(cfg_file.read_text())
    text = {**cfg, **(cfg.get("text_config") or {})}
    heads = text.get("num_attention_heads")
    head_size = text.get("head_dim") or (text["hidden_size"] // heads if heads and text.get("hidden_size") else None)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) or None
    mm = None
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        max_pixels = p.get("max_pixels") or (p.get("size") or {}).get("max_pixels")
        unit = (p.get("patch_size") or 14) * (p.get("merge_size") or 2)
        if max_pixels:
            mm = max_pixels // (unit * unit)
    base = builtin_profile(model_id or str(path))
    src = f"{path.name}/config.json"
    return replace(
        base,
        name=model_id or str(path),
        weight_bytes=weights,
        num_layers=text.get("num_hidden_layers"),
        num_kv_heads=text.get("num_key_value_heads") or heads,
        head_size=head_size,
        max_position_embeddings=text.get("max_position_embeddings"),
        mm_worst_case_tokens=mm if mm is not None else base.mm_worst_case_tokens,
        checkpoint_dtype=cfg.get("torch_dtype") or text.get("torch_dtype") or cfg.get("dtype"),
        sources={
            **base.sources,
            "weight_bytes": f"{path.name}/*.safetensors sizes",
            "num_layers": src,
            "num_kv_heads": src,
            "head_size": src,
            "max_position_embeddings": src,
            **({"mm_worst_case_tokens": f"{path.name}/preprocessor_config.json max_pixels (image tokens)"} if mm else {}),
        },
    )
