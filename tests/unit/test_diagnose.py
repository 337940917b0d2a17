"""`mineru-fleet diagnose`: the parser on real sandbox journals and on the assembled reference GPU log,
every finding of the seed host's README asserted, bad input through the CLI, and `plan --calibrate`."""

import json
import subprocess
import sys

import pytest

from mineru_fleet.core import diagnose as dg
from mineru_fleet.controller.factsdir import load_host_facts
from mineru_fleet.core.modelinfo import MINERU25_PROFILE
from mineru_fleet.core.planner import plan
from mineru_fleet.core.settings import load_settings, to_inventory
from mineru_fleet.paths import EXAMPLE_HOSTS
from tests.conftest import REPO

LOGS = REPO / "tests" / "fixtures" / "logs"
GPU_LOG = LOGS / "gpu-2x2080ti-reference.log"
MF1 = LOGS / "cpu-sandbox-mf1.journal"
MF2 = LOGS / "cpu-sandbox-mf2.journal"
SEED = EXAMPLE_HOSTS / "seed-2x2080ti"
REF_DATA = {"mineru_tensor_parallel_size": 2, "mineru_gpu_memory_utilization": 0.3, "mineru_max_model_len": 16384}


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "mineru_fleet.cli", *args], capture_output=True, cwd=REPO, input=stdin)


@pytest.fixture(scope="module")
def gpu():
    return dg.parse_log(GPU_LOG.read_bytes())


def codes(d):
    return [f.code for f in d.findings]


def finding(d, code):
    (f,) = [f for f in d.findings if f.code == code]
    return f


# ---------------------------------------------------------------------------- GPU reference log
def test_gpu_environment_and_command(gpu):
    assert gpu.ready and gpu.complete and not gpu.failed
    assert gpu.starts == 1 and gpu.first_line == 1  # the platform line before mineru's start line belongs to the start
    assert gpu.vllm_version == "0.10.2"
    assert gpu.platform == "cuda"
    assert gpu.engine == "V0"
    assert gpu.command[1:3] == ["serve", "/root/.cache/modelscope/hub/models/OpenDataLab/MinerU2___5-2509-1___2B"]
    assert gpu.command[-2:] == ["-tp", "2"]
    assert gpu.non_default_args["tensor_parallel_size"] == 2 and gpu.non_default_args["gpu_memory_utilization"] == 0.3
    assert gpu.mineru_logits_processor == "VLLM_USE_V1 is set to 0, disabling custom_logits_processors"


def test_gpu_model(gpu):
    assert gpu.model.endswith("MinerU2___5-2509-1___2B")
    assert gpu.architecture == "Qwen2VLForConditionalGeneration"
    assert gpu.dtype == "float16"
    assert "compute capability 7.5" in gpu.dtype_why and "fell back to float16" in gpu.dtype_why
    assert gpu.weights_load_gib == 1.0889


def test_gpu_multimodal_and_sequence_length(gpu):
    assert gpu.max_model_len == 16384
    assert gpu.mm_worst_case_tokens == 18225
    assert gpu.mm_profile_seq_len == 16384
    assert gpu.mm_tokens_by_modality == "{'image': 18225}"
    assert gpu.max_num_batched_tokens == 16384
    assert gpu.max_num_seqs == 256  # served limit
    assert gpu.profile_max_num_seqs == 1  # V0 profiling only


def test_gpu_memory_profile(gpu):
    assert gpu.profile_time_s == 7.21
    assert gpu.total_gpu_gib == 21.48
    assert gpu.gpu_memory_utilization == 0.3
    assert gpu.budget_gib == 6.44
    assert gpu.weights_gib == 1.09
    assert gpu.non_torch_gib == 0.13
    assert gpu.activation_peak_gib == 1.84
    assert gpu.kv_cache_gib == 3.38
    assert gpu.gpu_blocks == 36918 and gpu.cpu_blocks == 43690
    assert gpu.kv_cache_tokens == 36918 * 16
    assert gpu.concurrency_tokens == 16384 and gpu.max_concurrency == 36.05


def test_gpu_parallelism_communication_graphs(gpu):
    assert gpu.tensor_parallel_size == 2 and gpu.world_size == 2
    assert gpu.nccl_version == "2.27.3"
    assert gpu.custom_all_reduce.startswith("disabled: your platform lacks GPU P2P capability")
    assert gpu.gloo_fallback.startswith("loopback")
    assert gpu.nccl_fallback is None
    assert gpu.attention_backend == "XFormers"
    assert gpu.enforce_eager is False
    assert (gpu.cuda_graph_s, gpu.cuda_graph_gib) == (9.0, 0.38)
    assert gpu.init_engine_s == 19.87


def test_gpu_every_warning_line_is_kept(gpu):
    # 1 dtype fallback + 1 cast + 2 custom all-reduce + 2 Gloo + 2 max_num_seqs + 2 multimodal
    assert len(gpu.warnings) == 10
    assert all(w.level == "WARNING" for w in gpu.warnings)


@pytest.mark.parametrize(
    "code, line_part, fix_part, preventable",
    [
        # every row of examples/hosts/seed-2x2080ti/README.md
        ("dtype-fallback", "doesn't support torch.bfloat16", "mineru_dtype: auto", True),
        ("dtype-cast", "Casting torch.bfloat16 to torch.float16", "none needed", False),
        ("xformers-backend", "Using XFormers backend.", "", False),
        ("custom-allreduce-no-p2p", "lacks GPU P2P capability", "unset mineru_tensor_parallel_size", True),
        ("gloo-loopback", "Using the loopback address as fallback", "GLOO_SOCKET_IFNAME", True),
        ("mm-worst-case-exceeds-max-model-len", "18225 tokens in total", "mineru_max_model_len: 18432", True),
        ("profile-max-num-seqs-1", "min(256, 16384 // 18225)", "mineru_max_model_len: 18432", True),
        ("cuda-graph-capture", "Graph capturing finished in 9 secs, took 0.38 GiB", "mineru_enforce_eager: true", False),
        ("tensor-parallel-small-model", "tensor_parallel_size=2", "unset mineru_tensor_parallel_size", False),
        ("logits-processor-off", "VLLM_USE_V1 is set to 0, disabling custom_logits_processors", "mineru_vllm_use_v1: true", False),
    ],
)
def test_gpu_findings(gpu, code, line_part, fix_part, preventable):
    f = finding(gpu, code)
    assert f.evidence is not None and line_part in f.evidence.text
    assert GPU_LOG.read_text().splitlines()[f.evidence.line - 1].replace("\r", "").endswith(f.evidence.text[-40:])
    assert fix_part in f.fix
    assert f.preventable is preventable
    assert f.handled_by_plan is None  # no plan given


def test_gpu_findings_are_exactly_the_known_ones(gpu):
    assert sorted(codes(gpu)) == sorted(
        ["dtype-fallback", "dtype-cast", "xformers-backend", "custom-allreduce-no-p2p", "gloo-loopback",
         "mm-worst-case-exceeds-max-model-len", "profile-max-num-seqs-1", "cuda-graph-capture",
         "tensor-parallel-small-model", "logits-processor-off"]
    )
    assert finding(gpu, "gloo-loopback").count == 2 and finding(gpu, "custom-allreduce-no-p2p").count == 2


def test_gpu_findings_with_the_reference_plan():
    facts = load_host_facts(SEED)
    p = plan(facts, load_settings(REF_DATA, facts.host), MINERU25_PROFILE)
    d = dg.diagnose(GPU_LOG.read_bytes(), p.servers[0])
    assert "GLOO_SOCKET_IFNAME=enp5s0" in finding(d, "gloo-loopback").handled_by_plan
    assert "--disable-custom-all-reduce" in finding(d, "custom-allreduce-no-p2p").handled_by_plan
    assert "--dtype float16" in finding(d, "dtype-fallback").handled_by_plan
    assert finding(d, "mm-worst-case-exceeds-max-model-len").handled_by_plan is None  # max_model_len 16384 < 18225
    dg.apply_plan(d, p.servers[0], p.warnings)
    assert "18432" in finding(d, "mm-worst-case-exceeds-max-model-len").plan_warns
    # with max_model_len 18432 the plan prevents the multimodal findings too
    p2 = plan(facts, load_settings({**REF_DATA, "mineru_max_model_len": 18432}, facts.host), MINERU25_PROFILE)
    d2 = dg.diagnose(GPU_LOG.read_bytes(), p2.servers[0])
    assert finding(d2, "mm-worst-case-exceeds-max-model-len").handled_by_plan == "the plan passes --max-model-len 18432"
    # one server per GPU: no all-reduce, no TP warning
    p3 = plan(facts, load_settings({"mineru_gpu_memory_utilization": 0.3}, facts.host), MINERU25_PROFILE)
    d3 = dg.diagnose(GPU_LOG.read_bytes(), p3.servers[0])
    assert "one server per GPU" in finding(d3, "custom-allreduce-no-p2p").handled_by_plan
    assert "one server per GPU" in finding(d3, "tensor-parallel-small-model").handled_by_plan


def test_gpu_text_has_every_section(gpu):
    text = dg.diagnosis_text(gpu, "ref")
    for section in ("environment and command", "model", "multimodal and sequence length", "GPU memory (per GPU)",
                    "parallelism and communication", "CUDA graphs", "warnings and fixes"):
        assert section in text
    assert "[custom_all_reduce.py" not in text or "custom_all_reduce.py:154" in text  # no rich markup eaten
    assert "36.05x" in text and "3.38 GiB" in text and "2.27.3" in text


def test_gpu_cli_json():
    r = run("diagnose", "--journal", str(GPU_LOG), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kv_cache_gib"] == 3.38 and d["nccl_version"] == "2.27.3" and d["complete"] is True
    assert {f["code"] for f in d["findings"]} >= {"gloo-loopback", "custom-allreduce-no-p2p"}
    assert all(set(f) >= {"code", "severity", "message", "evidence", "fix", "preventable", "handled_by_plan"} for f in d["findings"])
    assert len(d["warnings"]) == 10


def test_cli_with_facts_marks_handled():
    r = run("diagnose", "--journal", str(GPU_LOG), "--facts", str(SEED), "--data", "tensor_parallel_size=2",
            "--data", "gpu_memory_utilization=0.3", "--data", "max_model_len=16384")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "already handled by the plan" in out and "GLOO_SOCKET_IFNAME=enp5s0" in out


# ---------------------------------------------------------------------------- real CPU journals
@pytest.mark.parametrize("path, starts, first", [(MF1, 3, 277), (MF2, 1, 1)])
def test_cpu_journals(path, starts, first):
    d = dg.parse_log(path.read_bytes())
    assert d.ready and d.complete
    assert d.starts == starts and d.first_line == first
    assert d.vllm_version == "0.10.2.post2"
    assert d.platform == "cpu" and d.engine == "V1"
    assert d.architecture == "Qwen2VLForConditionalGeneration"
    assert d.model == "/var/lib/mineru-fleet/models/local/tiny-qwen2vl/seed0"
    assert d.dtype == "bfloat16"
    assert d.max_model_len == 4096 and d.max_num_batched_tokens == 2048 and d.max_num_seqs == 256
    assert d.kv_cache_tokens == 1_048_576  # "GPU KV cache size: 1,048,576 tokens"
    assert (d.concurrency_tokens, d.max_concurrency) == (4096, 256.0)  # "... for 4,096 tokens per request: 256.00x"
    assert d.tensor_parallel_size == 1 and d.world_size == 1
    assert d.attention_backend == "Torch SDPA"
    assert d.custom_all_reduce == "off (disable_custom_all_reduce=True)"
    assert d.mineru_logits_processor == "CUDA not available, disabling custom_logits_processors"
    assert d.gpu_memory_utilization == 0.5
    assert d.mm_worst_case_tokens is None  # the CPU log has no multimodal worst-case profiling
    assert sorted(codes(d)) == sorted(["c10d-reverse-lookup", "fd-limit", "cpu-no-pin-memory", "cpu-no-cudagraph", "python-syntax-warning"])
    assert not dg.plan_should_have_prevented(d)
    f = finding(d, "fd-limit")
    assert "Found ulimit of 20000" in f.evidence.text and "LimitNOFILE=65536" in f.fix


def test_cpu_mf1_earlier_start_with_max_model_len_2048():
    """The second of mf1's three starts ran with --max-model-len 2048: cut the journal after it."""
    lines = MF1.read_text().splitlines(keepends=True)
    d = dg.parse_log("".join(lines[:266]))
    assert d.starts == 2 and d.max_model_len == 2048
    assert (d.concurrency_tokens, d.max_concurrency) == (2048, 512.0)


def test_journal_short_format_and_stdout_and_ansi():
    line = "Nov 25 15:14:22 mf1 mineru-vllm-server[897]: \x1b[1;36m(EngineCore_DP0 pid=897)\x1b[0;0m INFO 11-25 15:14:22 [kv_cache_utils.py:864] GPU KV cache size: 12,345 tokens\r\n"
    assert dg.parse_log(line).kv_cache_tokens == 12345
    assert dg.parse_log("INFO 11-25 15:14:22 [kv_cache_utils.py:868] Maximum concurrency for 4,096 tokens per request: 3.50x\n").max_concurrency == 3.5


def test_unknown_warnings_are_listed_not_dropped():
    log = (GPU_LOG.read_text()
           + "(APIServer pid=2231) WARNING 10-14 09:13:00 [serving_chat.py:99] Something new happened 1\n"
           + "(APIServer pid=2231) WARNING 10-14 09:13:01 [serving_chat.py:99] Something new happened 2\n")
    d = dg.parse_log(log)
    (u,) = [f for f in d.findings if f.code == "unknown-warning"]
    assert u.count == 2 and "Something new happened" in u.message and u.evidence.line == 50


def test_failed_start_errors():
    log = ("INFO 11-25 15:14:22 [api_server.py:1896] vLLM API server version 0.10.2\n"
           "Traceback (most recent call last):\n"
           "  File \"x.py\", line 1, in <module>\n"
           "ValueError: To serve at least one request with the models's max seq len (16384), (0.75 GiB KV cache is needed, which is "
           "larger than the available KV cache memory (0.50 GiB). Based on the available memory, the estimated maximum model length is 10912. "
           "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.\n")
    d = dg.parse_log(log)
    assert d.failed and d.complete
    f = finding(d, "kv-cache-too-small")
    assert f.severity == "error" and "10912" in f.fix and "gpu_memory_utilization" in f.fix
    # issue 13: a traceback is one finding naming the exception (it used to be an unknown-error row per line)
    tb = finding(d, "python-exception")
    assert tb.message.startswith("ValueError: To serve at least one request") and "kv-cache-too-small" in tb.fix
    assert not [x for x in d.findings if x.code == "unknown-error"]
    assert d.tracebacks[0]["exception"] == "ValueError" and len(d.tracebacks[0]["raw"]) == 3


# ---------------------------------------------------------------------------- bad input via the CLI
@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"hello world\nthis is not a log\n" * 20, "not a vLLM 0.10.2 startup log"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not UTF-8"),
        (b"LPKSHHRH" + b"\x00" * 64, "binary systemd journal"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 32, "compressed"),
        (b"\xff\xfeI\x00N\x00", "UTF-16"),
    ],
)
def test_cli_bad_input(tmp_path, content, needle):
    f = tmp_path / "bad.log"
    f.write_bytes(content)
    r = run("diagnose", "--journal", str(f))
    err = r.stderr.decode()
    assert r.returncode == 2
    assert needle in err and "Traceback" not in err


def test_cli_truncated_log(tmp_path):
    lines = GPU_LOG.read_bytes().split(b"\n")
    f = tmp_path / "cut.log"
    f.write_bytes(b"\n".join(lines[:33])[:-20])  # cut mid-way through the memory profile, mid-line
    r = run("diagnose", "--journal", str(f))
    assert r.returncode == 2
    assert "ends before the server was ready" in r.stderr.decode() + r.stdout.decode()
    assert "Traceback" not in r.stderr.decode()
    assert "startup-incomplete" in r.stdout.decode()
    rj = run("diagnose", "--journal", str(f), "--json")
    assert rj.returncode == 2 and json.loads(rj.stdout)["complete"] is False


def test_cli_missing_file_and_stdin(tmp_path):
    r = run("diagnose", "--journal", str(tmp_path / "nope.log"))
    assert r.returncode == 2 and b"cannot read" in r.stderr and b"Traceback" not in r.stderr
    r = run("diagnose", "--journal", "-", "--json", stdin=MF2.read_bytes())
    assert r.returncode == 0 and json.loads(r.stdout)["kv_cache_tokens"] == 1048576


def test_non_utf8_bytes_in_a_real_log_are_tolerated():
    raw = MF2.read_bytes().replace(b"Pin memory", b"Pin \xff memory", 1)
    d = dg.parse_log(raw)
    assert d.kv_cache_tokens == 1048576 and any("invalid UTF-8" in n for n in d.notes)


# ---------------------------------------------------------------------------- calibration
def test_calibration_predicted_vs_measured():
    facts = load_host_facts(SEED)
    s = load_settings(REF_DATA, facts.host)
    # a log that measured a larger activation peak than the built-in profile
    log = GPU_LOG.read_text().replace("activation peak memory takes 1.84GiB", "activation peak memory takes 2.10GiB")
    d = dg.parse_log(log)
    model, changed = dg.measured_model(d, MINERU25_PROFILE)
    assert changed == ["activation_peak_bytes", "cuda_graph_bytes", "mm_worst_case_tokens", "non_torch_bytes", "weight_bytes"]
    assert round(model.weight_bytes / 2**30, 2) == 2.18  # 1.09 GiB per GPU x TP 2
    before = plan(facts, s, MINERU25_PROFILE).servers[0]
    after = plan(facts, s, model).servers[0]
    rows = {r.figure: r for r in dg.calibration_rows(d, before, after)}
    assert rows["KV cache GiB"].predicted == 3.39 and rows["KV cache GiB"].calibrated == 3.13 and rows["KV cache GiB"].measured == 3.38
    assert rows["max concurrency"].predicted == 36.16 and rows["max concurrency"].measured == 36.05
    assert rows["max concurrency"].calibrated < rows["max concurrency"].predicted


def test_cli_plan_calibrate():
    args = ["plan", "--facts", str(SEED), "--data", "tensor_parallel_size=2", "--data", "gpu_memory_utilization=0.3",
            "--data", "max_model_len=16384", "--calibrate", str(GPU_LOG)]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "calibration from" in out and "predicted (model profile)" in out and "measured (log)" in out and "36.05" in out
    rj = run(*args, "--json")
    cal = json.loads(rj.stdout)["calibration"]
    kv = next(x for x in cal["rows"] if x["figure"] == "KV cache GiB")
    assert (kv["predicted"], kv["measured"]) == (3.39, 3.38)
    conc = next(x for x in cal["rows"] if x["figure"] == "max concurrency")
    assert (conc["predicted"], conc["measured"]) == (36.16, 36.05)


def test_cli_plan_calibrate_bad_log(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("nothing here\n")
    r = run("plan", "--facts", str(SEED), "--calibrate", str(f))
    assert r.returncode == 2 and b"not a vLLM" in r.stderr and b"Traceback" not in r.stderr


# ---------------------------------------------------------------------------- host reading, plan drift
def test_unit_journal_fact_splits_its_output():
    from mineru_fleet.controller.journal import MARK, UnitJournal, journal_script

    script = journal_script("mineru-vllm@0")
    assert "_SYSTEMD_INVOCATION_ID=\"$inv\" + INVOCATION_ID=\"$inv\"" in script and " -a " in script
    fact = UnitJournal()
    assert "InvocationID" in fact.command(unit="mineru-vllm@1") and "mineru-vllm@1" in fact.command(unit="mineru-vllm@1")
    out = fact.process([f"{MARK}invocation abc123", f"{MARK}active active", f"{MARK}lines", "line 1", "line 2"])
    assert out == {"unit": "mineru-vllm@1", "invocation": "abc123", "active": "active", "lines": ["line 1", "line 2"]}


def test_plan_drift_names_what_differs():
    facts = load_host_facts(SEED)
    p = plan(facts, load_settings(REF_DATA, facts.host), MINERU25_PROFILE)
    d = dg.diagnose(GPU_LOG.read_bytes(), p.servers[0])
    f = finding(d, "plan-drift")
    assert "model /root/.cache/modelscope" in f.message and "max_model_len" not in f.message  # 16384 both
    assert "deploy again" in f.fix and not f.preventable


# ---------------------------------------------------------------------------- logs from the wild (issue 13)
WILD = LOGS / "wild"
WILD_LOGS = sorted(WILD.glob("*.log"))


def test_wild_corpus_is_there():
    assert len(WILD_LOGS) >= 15
    sources = (WILD / "SOURCES.md").read_text()
    for p in WILD_LOGS:
        assert p.with_suffix(".truth.json").exists() and p.name in sources


@pytest.mark.parametrize("path", WILD_LOGS, ids=lambda p: p.stem)
def test_wild_log_truth(path):
    """Every figure the log states, read right; the findings that must and must not appear."""
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    d = dg.parse_log(path.read_bytes())  # never rejected
    sys.path.insert(0, str(WILD))
    try:
        from score import read, same
    finally:
        sys.path.remove(str(WILD))
    for key, want in truth["fields"].items():
        assert same(want, read(d, key)), f"{key}: want {want!r}, got {read(d, key)!r}"
    have = {f.code: f for f in d.findings}
    for code in truth["must"]:
        assert code in have, f"missing finding {code}: {sorted(have)}"
    for code, text in truth["finding_text"].items():
        assert text in have[code].message
    for code in truth["must_not"]:
        assert code not in have, f"finding {code} must not appear here: {have[code].message}"
    text = dg.diagnosis_text(d, path.name)
    assert "\x1b" not in text
    assert len([f for f in d.findings if f.code == "python-exception"]) == len(d.tracebacks)


def test_wild_score_script_table():
    r = subprocess.run([sys.executable, str(WILD / "score.py")], capture_output=True, cwd=REPO, text=True)
    assert r.returncode == 0, r.stderr
    total = [ln for ln in r.stdout.splitlines() if ln.startswith("| **total")][0]
    assert "0 rejected" in total and f"({len(WILD_LOGS)} logs" in total


def test_every_form_a_person_pastes():
    rec = "INFO 10-17 16:32:41 [kv_cache_utils.py:1087] GPU KV cache size: 425,424 tokens"
    for line in (f"vllm-1  | (EngineCore_DP0 pid=9) {rec}", f"2025-10-17T16:32:41.503918226Z {rec}", f"[pod/vllm-0/vllm] {rec}",
                 f"> {rec}", f"    {rec}", f"> > (APIServer pid=1) {rec}", f"[1;36m(EngineCore_DP0 pid=9)[0;0m {rec}",
                 f"(EngineCore_1 pid=7) (VllmWorker rank=1 pid=8) {rec}", f"│ {rec}   │",
                 f"2026-04-21 20:03:17.604 [Info] (Process) (EngineCore pid=1187) {rec}",
                 f"Oct 17 16:32:41 h vllm[9]: \x1b[1;36m(Worker_TP0 pid=9)\x1b[0;0m {rec}"):
        assert dg.parse_log(line + "\n").kv_cache_tokens == 425424, line
    flat = f"$ kubectl logs pod/x INFO 06-05 02:17:43 [api_server.py:1043] vLLM API server version 0.9.9 {rec}\n"
    d = dg.parse_log(flat)
    assert d.vllm_version == "0.9.9" and d.kv_cache_tokens == 425424


def test_worker_lines_of_vllm_09_are_kept():
    log = ("(VllmWorker rank=0 pid=4410) INFO 07-30 22:14:03 [pynccl.py:70] vLLM is using nccl==2.26.2\n"
           "(VllmWorker rank=1 pid=4411) ERROR 07-30 22:14:04 [multiproc_executor.py:1] Something broke\n")
    d = dg.parse_log(log)
    assert d.nccl_version == "2.26.2" and [w.msg for w in d.warnings] == ["Something broke"]


def test_max_num_seqs_default_depends_on_the_gpu():
    base = "INFO 11-25 15:13:45 [api_server.py:1896] vLLM API server version 0.10.2\nINFO 11-25 15:14:20 [core.py:654] Waiting for init message from front-end.\n"
    big = dg.parse_log(base + "INFO 11-25 15:14:01 [scheduler.py:222] Chunked prefill is enabled with max_num_batched_tokens=8192.\n")
    small = dg.parse_log(base + "INFO 11-25 15:14:01 [scheduler.py:222] Chunked prefill is enabled with max_num_batched_tokens=2048.\n")
    assert (big.max_num_seqs, small.max_num_seqs) == (1024, 256) and ">= 70 GiB" in big.max_num_seqs_source


def test_states_ready_finished_hang_truncated():
    assert dg.parse_log(GPU_LOG.read_bytes()).state == "ready"
    offline = dg.parse_log("INFO 11-25 15:14:20 [core.py:76] Initializing a V1 LLM engine (v0.10.2) with config: model='m'\n"
                           "INFO 11-25 15:14:40 [core.py:218] init engine (profile, create kv cache, warmup model) took 3.10 seconds\n")
    assert offline.state == "finished" and offline.complete and not [f for f in offline.findings if f.code.startswith("startup-")]
    cut = dg.parse_log("INFO 11-25 15:14:20 [core.py:76] Initializing a V1 LLM engine (v0.10.2) with config: model='m'\n")
    assert cut.state == "truncated" and not cut.complete and finding(cut, "startup-incomplete")


def test_findings_only_where_their_premises_hold():
    big = GPU_LOG.read_text().replace("MinerU2___5-2509-1___2B", "Qwen2.5-VL-72B-Instruct")
    d = dg.parse_log(big)
    assert "tensor-parallel-small-model" not in codes(d)
    v1 = GPU_LOG.read_text().replace("Initializing a V0 LLM engine", "Initializing a V1 LLM engine")
    assert "TP with V0" not in finding(dg.parse_log(v1), "tensor-parallel-small-model").message
    not_mineru = "\n".join(ln for ln in GPU_LOG.read_text().splitlines()
                           if "start vllm server" not in ln and "custom_logits_processors" not in ln).replace("MinerU2___5-2509-1___2B", "llama-1B")
    assert "logits-processor-off" not in codes(dg.parse_log(not_mineru + "\n"))


# ---------------------------------------------------------------------------- terminal safety (issue 10)
HOSTILE = ("\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\x1bc\x1b[2J\x9b31m\x07\x08"
           "[bold red]markup[/] [link=http://x]y[/link]")


def test_text_output_has_no_control_sequences_and_no_markup():
    log = (GPU_LOG.read_text() + f"(APIServer pid=2231) WARNING 10-14 09:13:00 [serving_chat.py:99] {HOSTILE}\n"
           + f"(APIServer pid=2231) ERROR 10-14 09:13:01 [serving_chat.py:99] Traceback (most recent call last):\n"
           + f"(APIServer pid=2231) ERROR 10-14 09:13:01 [serving_chat.py:99] ValueError: {HOSTILE}\n")
    d = dg.parse_log(log)
    js = json.dumps(d.to_json())  # what --json prints: nothing from the log carries a control character either
    assert "\\u001b" not in js and "\\u0007" not in js and "\\u009b" not in js
    d.notes.append(HOSTILE)
    text = dg.diagnosis_text(d, title=HOSTILE)
    assert not any(c in text for c in "\x1b\x07\x08\x9b")
    assert "[bold red]markup[/]" in text  # printed as text, not interpreted


def test_cli_text_output_is_terminal_safe(tmp_path):
    f = tmp_path / "x.log"
    f.write_text(GPU_LOG.read_text() + f"(APIServer pid=2231) WARNING 10-14 09:13:00 [serving_chat.py:99] {HOSTILE}\n")
    r = run("diagnose", "--journal", str(f))
    assert r.returncode == 0 and not any(c in r.stdout for c in b"\x1b\x07\x08") and b"[/]" in r.stdout


# ---------------------------------------------------------------------------- linear in the input (issue 10)
def test_crash_loop_journal_is_linear():
    """4,000 failed starts (about 2.4 MB) from our journal's lines: the work to find the starts is linear."""
    src = MF1.read_text().splitlines()
    start = [ln for ln in src if "systemd[1]: Starting mineru-vllm@0" in ln][0]
    mineru = [ln for ln in src if "start vllm server:" in ln][0]
    version = [ln for ln in src if "vLLM API server version" in ln][0]
    one = [start, mineru, version, src[8].replace("WARNING", "ERROR"),
           start.replace("Starting mineru-vllm@0.service - MinerU vLLM server 0 (mineru-fleet, profile cpu)...",
                         "mineru-vllm@0.service: Main process exited, code=exited, status=1/FAILURE")]

    def journal(n):
        return ("\n".join(one * n) + "\n").encode()

    big = journal(4000)
    assert 2_000_000 < len(big) < 5_000_000
    d_small, d_big = dg.parse_log(journal(400)), dg.parse_log(big)
    assert d_big.starts == 4000 and d_big.failed
    assert d_big.scan_steps <= 2 * d_big.lines_total  # one pass (the old search re-scanned: quadratic in starts)
    assert d_big.scan_steps <= 11 * d_small.scan_steps


def test_rejected_server_argument_is_named(tmp_path):
    """A crash loop from a bad mineru_extra_args: argparse's error line is the cause, with the flag named."""
    journal = "\n".join([
        "2026-11-30T05:00:00+0000 mf1 systemd[1]: Starting mineru-vllm@0.service - MinerU vLLM server 0...",
        "2026-11-30T05:00:09+0000 mf1 mineru-vllm-server[812]: INFO 11-30 05:00:09 [__init__.py:216] Automatically detected platform cpu.",
        "2026-11-30T05:00:12+0000 mf1 mineru-vllm-server[812]: usage: mineru-vllm-server [-h] [--model MODEL]",
        "2026-11-30T05:00:12+0000 mf1 mineru-vllm-server[812]: mineru-vllm-server: error: unrecognized arguments: --no-such-flag",
        "2026-11-30T05:00:12+0000 mf1 systemd[1]: mineru-vllm@0.service: Main process exited, code=exited, status=2/INVALIDARGUMENT",
    ]) + "\n"
    d = dg.diagnose(journal)
    (f,) = [f for f in d.findings if f.code == "server-arguments-rejected"]
    assert f.severity == "error" and "unrecognized arguments: --no-such-flag" in f.message
    assert "mineru_extra_args" in f.fix and f.evidence.line == 4
