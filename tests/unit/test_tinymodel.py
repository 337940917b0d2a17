"""The torch-free tiny Qwen2-VL generator against a record of what real transformers 4.56.2 writes.

tests/fixtures/tiny_qwen2vl_tensors.json was written by real torch + transformers
(Qwen2VLForConditionalGeneration(config).save_pretrained() for the same settings).
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from mineru_fleet.sandbox import tinymodel as tm

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "tiny_qwen2vl_tensors.json").read_text())
VISION_TRIPLE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tm.make_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "model")


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _bf16(raw: bytes) -> np.ndarray:
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def _render(template: str, messages: list, **kw) -> str:
    # the way transformers renders chat templates
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(template).render(messages=messages, **kw)


def test_files_are_those_transformers_writes(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert set(FIXTURE["files"]) <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"


def test_tensor_names_shapes_dtypes_match_transformers(model_dir):
    n, header = _header(model_dir / "model.safetensors")
    assert n % 8 == 0
    assert header.pop("__metadata__") == FIXTURE["safetensors_metadata"] == {"format": "pt"}
    got = {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()}
    assert got == FIXTURE["tensors"]
    assert list(header) == sorted(header)  # the order the safetensors library writes
    # contiguous, complete data section
    end = 0
    for name in header:
        start, stop = header[name]["data_offsets"]
        assert start == end and stop - start == 2 * math.prod(header[name]["shape"]), name
        end = stop
    assert (model_dir / "model.safetensors").stat().st_size == 8 + n + end
    assert tm.tensor_shapes() == {k: v["shape"] for k, v in FIXTURE["tensors"].items()}


def test_safetensors_library_reads_it(model_dir):
    import safetensors

    items = dict(safetensors.deserialize((model_dir / "model.safetensors").read_bytes()))
    assert set(items) == set(FIXTURE["tensors"])
    for name, t in items.items():
        assert list(t["shape"]) == FIXTURE["tensors"][name]["shape"]
        assert str(t["dtype"]).lower() in {"bf16", "bfloat16"}


def test_weights_look_initialised(model_dir):
    import safetensors

    items = dict(safetensors.deserialize((model_dir / "model.safetensors").read_bytes()))
    for name, t in items.items():
        x = _bf16(bytes(t["data"]))
        assert np.isfinite(x).all(), name
        if name.endswith(".bias"):
            assert (x == 0).all(), name
        elif "norm" in name or "ln_q" in name:
            assert (x == 1).all(), name
        else:
            assert 0.015 < x.std() < 0.025 and abs(x.mean()) < 0.005, (name, x.std(), x.mean())


def test_config_matches_transformers(model_dir):
    config = _load(model_dir / "config.json")
    assert config.pop("torch_dtype") == config["dtype"] == "bfloat16"  # our one addition
    assert config == FIXTURE["config"]
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert config["model_type"] == "qwen2_vl"
    assert sorted(config) == FIXTURE["config_keys"]["top"]
    assert sorted(config["text_config"]) == FIXTURE["config_keys"]["text_config"]
    assert sorted(config["vision_config"]) == FIXTURE["config_keys"]["vision_config"]
    # text settings at the top level too (vLLM / old readers look there)
    for k in ("hidden_act", "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "rope_scaling"):
        assert config[k] == config["text_config"][k], k


def test_head_sizes_supported_by_vllm(model_dir):
    config = _load(model_dir / "config.json")
    tc, vc = config["text_config"], config["vision_config"]
    head = tc["hidden_size"] // tc["num_attention_heads"]
    assert tc["hidden_size"] % tc["num_attention_heads"] == 0
    assert head in tm.VLLM_HEAD_SIZES == {32, 64, 80, 96, 112, 128, 192, 256}
    assert tc["num_attention_heads"] % tc["num_key_value_heads"] == 0
    assert 2 * sum(tc["rope_scaling"]["mrope_section"]) == head
    assert vc["embed_dim"] // vc["num_heads"] in tm.VLLM_HEAD_SIZES
    assert vc["hidden_size"] == tc["hidden_size"]
    # tensor parallel 2 divides every head count
    assert tc["num_attention_heads"] % 2 == tc["num_key_value_heads"] % 2 == vc["num_heads"] % 2 == 0


def test_tokenizer_special_tokens_match_config(model_dir):
    config = _load(model_dir / "config.json")
    gen = _load(model_dir / "generation_config.json")
    tok_cfg = _load(model_dir / "tokenizer_config.json")
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in tm.SPECIAL_TOKENS}
    assert None not in ids.values()
    assert tok.get_vocab_size(with_added_tokens=True) == config["vocab_size"] == config["text_config"]["vocab_size"]
    assert config["image_token_id"] == ids["<|image_pad|>"]
    assert config["video_token_id"] == ids["<|video_pad|>"]
    assert config["vision_start_token_id"] == ids["<|vision_start|>"]
    assert config["vision_end_token_id"] == ids["<|vision_end|>"]
    assert config["vision_token_id"] == ids["<|vision_pad|>"]
    assert config["eos_token_id"] == config["text_config"]["eos_token_id"] == ids["<|im_end|>"]
    assert config["bos_token_id"] == ids["<|endoftext|>"]
    assert gen["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]] and gen["pad_token_id"] == ids["<|endoftext|>"]
    assert _load(model_dir / "added_tokens.json") == ids
    assert {int(k): v["content"] for k, v in tok_cfg["added_tokens_decoder"].items()} == {i: t for t, i in ids.items()}
    assert all(v["special"] for v in tok_cfg["added_tokens_decoder"].values())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["pad_token"] == "<|endoftext|>"
    smap = _load(model_dir / "special_tokens_map.json")
    assert smap["eos_token"]["content"] == "<|im_end|>" and smap["additional_special_tokens"] == list(tm.SPECIAL_TOKENS[1:])
    # every id decodes (the random model may emit any of them), text round-trips
    assert len(tok.decode(list(range(config["vocab_size"])), skip_special_tokens=False)) > 0
    text = "Hello world! Describe the table: 3 rows, ünïcödé 表格.\n"
    assert tok.decode(tok.encode(text).ids) == text


def test_chat_template_renders_image(model_dir):
    tok_cfg = _load(model_dir / "tokenizer_config.json")
    jinja_file = (model_dir / "chat_template.jinja").read_text()
    assert tok_cfg["chat_template"] == jinja_file == tm.CHAT_TEMPLATE
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
    ]
    prompt = _render(jinja_file, messages, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{VISION_TRIPLE}Describe the image.<|im_end|>\n<|im_start|>assistant\n"
    )
    # OpenAI-style image_url parts (what vLLM's chat endpoint gets) render the same way
    oai = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text", "text": "x"}]}]
    assert VISION_TRIPLE in _render(jinja_file, oai, add_generation_prompt=True)
    assert _render(jinja_file, [{"role": "user", "content": "hi"}]).endswith("<|im_start|>user\nhi<|im_end|>\n")
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tok.encode(prompt).ids
    assert ids.count(tok.token_to_id("<|image_pad|>")) == 1
    assert ids.count(tok.token_to_id("<|im_start|>")) == 3


def test_preprocessor_pixels(model_dir):
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        p = _load(model_dir / name)
        assert p["min_pixels"] == 4 * 28 * 28 and p["max_pixels"] == 64 * 28 * 28, name
        assert p["size"] == {"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}, name
        assert p["patch_size"] == 14 and p["merge_size"] == 2 and p["temporal_patch_size"] == 2, name
    assert _load(model_dir / "preprocessor_config.json")["image_processor_type"] == "Qwen2VLImageProcessor"


def test_size(model_dir):
    total = sum(p.stat().st_size for p in model_dir.iterdir())
    assert 1_000_000 < total < 3_000_000, total


def test_deterministic(model_dir, tmp_path):
    again = tm.make_tiny_qwen2vl(tmp_path / "again", seed=0)
    files = sorted(p.name for p in model_dir.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (model_dir / name).read_bytes() == (again / name).read_bytes(), name
    other = tm.make_tiny_qwen2vl(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    for name in files:
        if name != "model.safetensors":
            assert (other / name).read_bytes() == (again / name).read_bytes(), name


def test_rerun_leaves_identical_files_alone(tmp_path):
    out = tm.make_tiny_qwen2vl(tmp_path / "m")
    before = {p.name: p.stat().st_ino for p in out.iterdir()}
    (out / "config.json").write_text("{}")
    tm.make_tiny_qwen2vl(out)
    after = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert {n for n in before if before[n] != after[n]} == {"config.json"}
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_vl"


def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "mineru_fleet.sandbox.tinymodel", str(out)], capture_output=True, text=True, check=True)
    assert (out / "model.safetensors").is_file() and "model.safetensors" in r.stdout
