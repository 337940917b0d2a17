"""Show a plan: a table per server (setting, value, why) and the warnings with their fixes."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console
from rich.table import Table

from mineru_fleet.core.planner import Plan, PlanError


def _concurrency_why(m, p: Plan) -> str:
    if not m.max_model_len:
        return "full-length sequences the KV cache holds at once (sequence length unknown: set max_model_len)"
    if m.max_model_len_from == "max_model_len":
        whence = "max_model_len"
    else:
        whence = "the model's own limit, config.json max_position_embeddings"
    return f"full {m.max_model_len}-token sequences the KV cache holds at once ({whence})"


def _fmt(v) -> str:
    return "unknown" if v is None else str(v)


#: C0/C1 control characters except newline and tab: a value read from a host or a log never drives the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character (ESC of a colour, OSC title or hyperlink, a terminal reset) shown escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def plan_text(p: Plan, width: int = 140) -> str:
    """The plan as text tables (what an engineer would otherwise write by hand from a startup log).

    Rich markup is off: a ``[`` in a host name or value prints as itself; control characters are escaped."""
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=False, color_system=None, markup=False, highlight=False, emoji=False)
    con.print(f"{p.host}: profile {p.profile}, {len(p.servers)} server(s), model {p.model.name} at {p.model_dir}")
    for row in p.rows:
        con.print(f"  {row.setting}: {row.value}  ({row.why})")
    for sv in p.servers:
        t = Table(title=f"server mineru-vllm@{sv.name}  port {sv.port}", title_justify="left", show_lines=False)
        t.add_column("setting", no_wrap=True)
        t.add_column("value", overflow="fold")
        t.add_column("why", overflow="fold")
        for row in sv.rows:
            t.add_row(row.setting, row.value, row.why)
        m = sv.memory
        mem_rows = [
            ("memory: CUDA-visible", m.visible_gib, "GiB per GPU (nvidia-smi total - driver reserved)"),
            ("memory: budget", m.budget_gib, "GiB per GPU = visible x gpu_memory_utilization" if sv.cuda_visible_devices else "GiB (VLLM_CPU_KVCACHE_SPACE)"),
            ("memory: weights", m.weights_gib, f"GiB per GPU = model bytes / TP {sv.tensor_parallel_size}"),
            ("memory: non-torch", m.non_torch_gib, "GiB " + p.model.sources.get("non_torch_bytes", "")),
            ("memory: activation peak", m.activation_peak_gib, "GiB " + p.model.sources.get("activation_peak_bytes", "")),
            ("memory: KV cache", m.kv_cache_gib, "GiB left for the KV cache"),
            ("KV cache tokens", m.kv_cache_tokens, f"{_fmt(m.kv_bytes_per_token)} bytes per token per GPU"),
            ("max concurrency", m.max_concurrency, _concurrency_why(m, p)),
            ("CUDA graphs", m.cuda_graph_gib, "GiB outside the budget (enforce_eager skips them)"),
        ]
        for name, val, why in mem_rows:
            if sv.cuda_visible_devices is None and name in ("memory: CUDA-visible", "memory: non-torch", "memory: activation peak", "CUDA graphs"):
                continue
            t.add_row(name, _fmt(val), why)
        con.print(t)
        con.print("  env: " + " ".join(f"{k}={v}" for k, v in sv.env.items()))
        con.print("  cmd: mineru-vllm-server " + " ".join(sv.args))
    if p.warnings:
        t = Table(title="warnings", title_justify="left")
        t.add_column("code", no_wrap=True)
        t.add_column("message", overflow="fold")
        t.add_column("fix", overflow="fold")
        for w in p.warnings:
            t.add_row(w.code, w.message, w.fix)
        con.print(t)
    return terminal_safe(buf.getvalue())


def plan_json(p: Plan) -> str:
    return json.dumps(p.to_json(), indent=2)


def errors_text(e: PlanError) -> str:
    lines = [f"{e.host}: cannot plan this host:"]
    for f in e.errors:
        lines.append(f"  [{f.code}] {f.message}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    return terminal_safe("\n".join(lines))
