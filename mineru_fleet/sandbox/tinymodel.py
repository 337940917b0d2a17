"""A tiny, random-weight Qwen2-VL model folder, made without torch or transformers.

The tests and the README's quick-start serve this model with vLLM 0.10.2 (or
``mineru-vllm-server --model DIR``): no model hub is reachable from the machines
that run them.  The folder has the files that transformers 4.56.2 writes for
``Qwen2VLForConditionalGeneration.save_pretrained`` + ``Qwen2VLProcessor.save_pretrained``:

- ``config.json``: a Qwen2VLConfig as 4.56.2 writes it (text settings at the top
  level *and* in ``text_config``; ``vision_config``), plus a top-level
  ``torch_dtype`` next to ``dtype`` so that older readers see the dtype too;
- ``generation_config.json``;
- ``model.safetensors``: bfloat16, with the tensor names transformers 4.56.2
  saves (``model.*`` for the language model, ``visual.*`` for the vision tower;
  embeddings tied, so no ``lm_head.weight``).  vLLM 0.10.2's ``qwen2_vl.py``
  maps ``model.`` -> ``language_model.model.`` and loads ``visual.`` as is;
- a byte-level BPE tokenizer with the Qwen2 special tokens: ``tokenizer.json``,
  ``tokenizer_config.json`` (which also carries the chat template, as the
  Qwen2-VL hub repositories do), ``special_tokens_map.json``,
  ``added_tokens.json``, ``vocab.json``, ``merges.txt``, ``chat_template.jinja``;
- ``preprocessor_config.json`` (Qwen2VLImageProcessor, 4*28*28 to 64*28*28
  pixels, so an image costs 1 to 64 tokens) and ``video_preprocessor_config.json``.

Shapes: text hidden 128, 2 layers, 2 heads of 64 (a head size vLLM supports),
mrope sections [8, 12, 12] (sum = head_dim / 2); vision depth 1, width 128,
2 heads of 64.  About 1.07 M parameters, 2.1 MB of weights.

Everything is deterministic: the same seed gives byte-identical files (the
weights come from numpy's legacy ``RandomState``, whose stream numpy keeps
stable, and the vocabulary is built by a fixed rule, not trained).

CLI: ``python -m mineru_fleet.sandbox.tinymodel OUT_DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import struct
import sys
from pathlib import Path

from mineru_fleet.sandbox.fsutil import write_atomic

import numpy as np

__all__ = [
    "CHAT_TEMPLATE",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "SPECIAL_TOKENS",
    "VLLM_HEAD_SIZES",
    "make_tiny_qwen2vl",
    "tensor_shapes",
    "tiny_config",
]

TRANSFORMERS_VERSION = "4.56.2"

#: head sizes that every vLLM 0.10.2 attention backend we meet accepts
VLLM_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 192, 256})

#: Qwen2 special tokens, in Qwen2's id order (they get the last ids of the vocabulary)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: the chat template of Qwen2-VL-*-Instruct
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = 512  # = tokenizer size: every id the random model can emit decodes
MODEL_MAX_LENGTH = 4096
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 64 * 28 * 28
INITIALIZER_RANGE = 0.02

_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "mrope_section": [8, 12, 12],
}
_VISION = {
    "depth": 1,
    "embed_dim": 128,
    "num_heads": 2,
    "mlp_ratio": 4,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}

# Qwen2's pre-tokenizer split pattern
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Words whose spellings become BPE merges (left to right, bare and with a leading space).
_WORDS = (
    "the system user assistant You are a helpful Describe image picture What is in this "
    "Hello hello world text Text table Table title Title equation Equation formula Formula "
    "list List Layout Detection Recognition document Document page Page of and to for with "
    "quick brown fox jumps over lazy dog test model tiny random weights parse parsing "
    "content header footer figure caption number row column cell sample one two three "
    "line block code reference abstract section paragraph"
).split()


# --------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> list[tuple[int, str]]:
    """GPT-2's byte -> printable character table, in GPT-2's id order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """256 byte symbols + merges from _WORDS until the regular vocabulary is full."""
    vocab: dict[str, int] = {}
    for _, ch in _bytes_to_unicode():
        vocab[ch] = len(vocab)
    n_regular = VOCAB_SIZE - len(SPECIAL_TOKENS)
    merges: list[tuple[str, str]] = []
    space = dict(_bytes_to_unicode())[ord(" ")]  # 'Ġ'
    for word in _WORDS:
        for variant in (space + word, word):
            cur = variant[0]
            for ch in variant[1:]:
                new = cur + ch
                if new not in vocab:
                    if len(vocab) == n_regular:
                        return vocab, merges
                    vocab[new] = len(vocab)
                    merges.append((cur, ch))
                cur = new
    raise AssertionError(f"word list too short: {len(vocab)} < {n_regular} regular tokens")


def _build_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens(
        [AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True) for t in SPECIAL_TOKENS]
    )
    # Some tokenizers releases ignore ByteLevel options given to the Python constructors (decoders.ByteLevel
    # takes none at all): set them in the serialized form, as Qwen2's tokenizer.json has them.
    d = json.loads(tok.to_str())
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    d["pre_tokenizer"]["pretokenizers"][1] = dict(byte_level)
    d["post_processor"] = dict(byte_level)
    d["decoder"] = dict(byte_level)
    tok = Tokenizer.from_str(json.dumps(d))
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise AssertionError(f"tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, want {VOCAB_SIZE}")
    return tok


def _special_ids() -> dict[str, int]:
    first = VOCAB_SIZE - len(SPECIAL_TOKENS)
    return {t: first + i for i, t in enumerate(SPECIAL_TOKENS)}


# --------------------------------------------------------------------------- config


def tiny_config() -> dict:
    """config.json's content, as transformers 4.56.2 writes a Qwen2VLConfig."""
    ids = _special_ids()
    t = _TEXT
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    assert head_dim in VLLM_HEAD_SIZES and sum(t["mrope_section"]) * 2 == head_dim
    v = _VISION
    assert v["embed_dim"] // v["num_heads"] in VLLM_HEAD_SIZES
    rope_scaling = {"mrope_section": list(t["mrope_section"]), "rope_type": "default", "type": "default"}
    common = {
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "dtype": "bfloat16",
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": t["hidden_size"],
        "initializer_range": INITIALIZER_RANGE,
        "intermediate_size": t["intermediate_size"],
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "max_window_layers": t["num_hidden_layers"],
        "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"],
        "num_key_value_heads": t["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": rope_scaling,
        "rope_theta": 1000000.0,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB_SIZE,
    }
    text_config = dict(
        common,
        image_token_id=None,
        layer_types=["full_attention"] * t["num_hidden_layers"],
        model_type="qwen2_vl_text",
        rope_scaling=dict(rope_scaling),
        sliding_window=None,
        tie_word_embeddings=True,
        video_token_id=None,
    )
    vision_config = {
        "depth": v["depth"],
        "embed_dim": v["embed_dim"],
        "hidden_act": "quick_gelu",
        "hidden_size": t["hidden_size"],  # the merger's output width = the language model's width
        "in_channels": v["in_channels"],
        "initializer_range": INITIALIZER_RANGE,
        "mlp_ratio": v["mlp_ratio"],
        "model_type": "qwen2_vl",
        "num_heads": v["num_heads"],
        "patch_size": v["patch_size"],
        "spatial_merge_size": v["spatial_merge_size"],
        "temporal_patch_size": v["temporal_patch_size"],
    }
    return dict(
        common,
        architectures=["Qwen2VLForConditionalGeneration"],
        image_token_id=ids["<|image_pad|>"],
        model_type="qwen2_vl",
        sliding_window=MODEL_MAX_LENGTH,
        text_config=text_config,
        torch_dtype="bfloat16",  # not written by 4.56.2 (it writes "dtype"); read by older transformers
        transformers_version=TRANSFORMERS_VERSION,
        video_token_id=ids["<|video_pad|>"],
        vision_config=vision_config,
        vision_end_token_id=ids["<|vision_end|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_token_id=ids["<|vision_pad|>"],
    )


def tensor_shapes(config: dict | None = None) -> dict[str, list[int]]:
    """Tensor name -> shape, as Qwen2VLForConditionalGeneration.save_pretrained (4.56.2) names them."""
    c = config or tiny_config()
    tc, vc = c["text_config"], c["vision_config"]
    H, I, V = tc["hidden_size"], tc["intermediate_size"], tc["vocab_size"]
    nh, nkv = tc["num_attention_heads"], tc["num_key_value_heads"]
    hd = H // nh
    s: dict[str, list[int]] = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H]}
    for i in range(tc["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = [H]
        s[p + "post_attention_layernorm.weight"] = [H]
        s[p + "mlp.gate_proj.weight"] = [I, H]
        s[p + "mlp.up_proj.weight"] = [I, H]
        s[p + "mlp.down_proj.weight"] = [H, I]
        for name, n in (("q", nh), ("k", nkv), ("v", nkv)):
            s[p + f"self_attn.{name}_proj.weight"] = [n * hd, H]
            s[p + f"self_attn.{name}_proj.bias"] = [n * hd]
        s[p + "self_attn.o_proj.weight"] = [H, nh * hd]
    if not tc.get("tie_word_embeddings", True):
        s["lm_head.weight"] = [V, H]
    E, m = vc["embed_dim"], vc["spatial_merge_size"]
    M = int(E * vc["mlp_ratio"])
    s["visual.patch_embed.proj.weight"] = [E, vc["in_channels"], vc["temporal_patch_size"], vc["patch_size"], vc["patch_size"]]
    for j in range(vc["depth"]):
        p = f"visual.blocks.{j}."
        for norm in ("norm1", "norm2"):
            s[p + norm + ".weight"] = [E]
            s[p + norm + ".bias"] = [E]
        s[p + "attn.qkv.weight"] = [3 * E, E]
        s[p + "attn.qkv.bias"] = [3 * E]
        s[p + "attn.proj.weight"] = [E, E]
        s[p + "attn.proj.bias"] = [E]
        s[p + "mlp.fc1.weight"] = [M, E]
        s[p + "mlp.fc1.bias"] = [M]
        s[p + "mlp.fc2.weight"] = [E, M]
        s[p + "mlp.fc2.bias"] = [E]
    ctx = E * m * m
    s["visual.merger.ln_q.weight"] = [E]
    s["visual.merger.ln_q.bias"] = [E]
    s["visual.merger.mlp.0.weight"] = [ctx, ctx]
    s["visual.merger.mlp.0.bias"] = [ctx]
    s["visual.merger.mlp.2.weight"] = [vc["hidden_size"], ctx]
    s["visual.merger.mlp.2.bias"] = [vc["hidden_size"]]
    return s


# --------------------------------------------------------------------------- weights


def _init_values(name: str, shape: list[int], seed: int) -> np.ndarray:
    """transformers-like init: norms 1, biases 0, other weights ~ U(-a, a) with std INITIALIZER_RANGE."""
    n = int(np.prod(shape))
    last = name.rsplit(".", 2)
    is_norm = "norm" in last[-2] or last[-2] == "ln_q"
    if name.endswith(".bias"):
        return np.zeros(n, dtype=np.float32)
    if is_norm:
        return np.ones(n, dtype=np.float32)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rs = np.random.RandomState(int.from_bytes(digest[:4], "little"))
    a = INITIALIZER_RANGE * np.sqrt(3.0)
    return ((rs.random_sample(n) * 2.0 - 1.0) * a).astype(np.float32)


def _to_bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even), little-endian bytes."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype("<u2").tobytes()


def _safetensors_bytes(tensors: dict[str, tuple[list[int], bytes]], dtype: str = "BF16") -> bytes:
    """The safetensors layout the Rust library writes: sorted names, compact JSON header padded to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(tensors[n][1] for n in sorted(tensors))


# --------------------------------------------------------------------------- other files


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _generation_config(ids: dict[str, int]) -> dict:
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "transformers_version": TRANSFORMERS_VERSION,
    }


_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def _preprocessor_config() -> dict:
    v = _VISION
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": _IMAGE_MEAN,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": _IMAGE_STD,
        "max_pixels": MAX_PIXELS,
        "merge_size": v["spatial_merge_size"],
        "min_pixels": MIN_PIXELS,
        "patch_size": v["patch_size"],
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": MAX_PIXELS, "shortest_edge": MIN_PIXELS},
        "temporal_patch_size": v["temporal_patch_size"],
    }


def _video_preprocessor_config() -> dict:
    v = _VISION
    return {
        "crop_size": None,
        "data_format": "channels_first",
        "default_to_square": True,
        "device": None,
        "do_center_crop": None,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": None,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": False,
        "fps": None,
        "image_mean": _IMAGE_MEAN,
        "image_std": _IMAGE_STD,
        "input_data_format": None,
        "max_frames": 768,
        "max_pixels": MAX_PIXELS,
        "merge_size": v["spatial_merge_size"],
        "min_frames": 4,
        "min_pixels": MIN_PIXELS,
        "num_frames": None,
        "patch_size": v["patch_size"],
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "return_metadata": False,
        "size": {"longest_edge": MAX_PIXELS, "shortest_edge": MIN_PIXELS},
        "size_divisor": None,
        "temporal_patch_size": v["temporal_patch_size"],
        "video_metadata": None,
        "video_processor_type": "Qwen2VLVideoProcessor",
    }


def _token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _tokenizer_config(ids: dict[str, int]) -> dict:
    return {
        "added_tokens_decoder": {str(i): dict(_token_entry(t), special=True) for t, i in ids.items()},
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,  # 4.56.2 keeps it in chat_template.jinja only; hub repos have it here too
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen2VLProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _special_tokens_map() -> dict:
    return {
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "eos_token": _token_entry("<|im_end|>"),
        "pad_token": _token_entry("<|endoftext|>"),
    }


# --------------------------------------------------------------------------- entry points


def _model_files(seed: int) -> dict[str, bytes]:
    ids = _special_ids()
    config = tiny_config()
    tensors = {name: (shape, _to_bf16_bytes(_init_values(name, shape, seed))) for name, shape in tensor_shapes(config).items()}
    tok = _build_tokenizer()
    files: dict[str, bytes] = {
        "config.json": _dump(config).encode(),
        "generation_config.json": _dump(_generation_config(ids)).encode(),
        "model.safetensors": _safetensors_bytes(tensors),
        "tokenizer.json": (tok.to_str(pretty=True)).encode(),
        "tokenizer_config.json": _dump(_tokenizer_config(ids)).encode(),
        "special_tokens_map.json": _dump(_special_tokens_map()).encode(),
        "added_tokens.json": _dump(dict(sorted(ids.items()))).encode(),
        "chat_template.jinja": CHAT_TEMPLATE.encode(),
        "preprocessor_config.json": _dump(_preprocessor_config()).encode(),
        "video_preprocessor_config.json": _dump(_video_preprocessor_config()).encode(),
    }
    with tempfile.TemporaryDirectory() as tmp:  # vocab.json + merges.txt exactly as tokenizers writes them
        for written in tok.model.save(tmp):
            files[Path(written).name] = Path(written).read_bytes()
    return files


def make_tiny_qwen2vl(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny Qwen2-VL model folder into ``out_dir`` (created if needed) and return it.

    Same seed -> byte-identical files.  Files that already hold the right bytes are left untouched;
    others are replaced atomically (write to a temporary name, then rename).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(_model_files(seed).items()):
        path = out / name
        if path.is_file() and path.read_bytes() == data:
            continue
        write_atomic(path, data)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mineru_fleet.sandbox.tinymodel", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = make_tiny_qwen2vl(args.out_dir, seed=args.seed)
    for p in sorted(out.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            print(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.stat().st_size:>9}  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
