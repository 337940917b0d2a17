"""The deployed sandbox hosts, checked as an operator would: systemd, files, HTTP, the MinerU client.

Real systemd (Debian 13 nspawn hosts over SSH), real vLLM 0.10.2 CPU build, a real tiny Qwen2-VL.
"""

from __future__ import annotations

import base64
import re
import shlex
import struct
import subprocess
import sys
import zlib

import pytest
import requests

from mineru_fleet.sandbox import client
from mineru_fleet.sandbox import quickstart
from mineru_fleet.sandbox.samplepdf import make_sample_pdf
from mineru_fleet.core.units import parse_env_file

pytestmark = pytest.mark.e2e
UNIT = "mineru-vllm@0"


def main_pid(h) -> int:
    return int(h.check_output(f"systemctl show -p MainPID --value {UNIT}"))


def png(width: int = 96, height: int = 64) -> bytes:
    """A small RGB PNG (red square on white), written by hand."""
    rows = b"".join(
        b"\x00" + b"".join(b"\xdd\x22\x22" if 16 <= x < 64 and 16 <= y < 48 else b"\xff\xff\xff" for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_service_active_enabled_and_valid(ti):
    for ip, h in ti.items():
        svc = h.service(UNIT)
        assert svc.is_running, ip
        assert svc.is_enabled, ip
        assert svc.is_valid, ip  # systemd-analyze verify


def test_systemd_analyze_verify_is_clean(ti):
    for ip, h in ti.items():
        r = h.run(f"systemd-analyze verify {UNIT}.service")
        assert r.rc == 0 and "mineru-vllm" not in r.stderr, (ip, r.stderr)


def test_runs_as_mineru_not_root(ti):
    for ip, h in ti.items():
        pid = main_pid(h)
        assert h.check_output(f"ps -o user= -p {pid}").strip() == "mineru", ip
        u = h.user("mineru")
        assert u.uid != 0 and u.shell == "/usr/sbin/nologin", ip


def test_env_file_matches_the_plan_and_is_private(ti, plans):
    for ip, h in ti.items():
        (server,) = plans[ip].servers
        f = h.file(f"/etc/mineru-fleet/{UNIT}.env")
        assert f.user == "root" and f.mode == 0o600, (ip, f.user, oct(f.mode))
        env = parse_env_file(f.content_string)
        assert shlex.split(env.pop("MINERU_VLLM_ARGS")) == server.args
        assert env == server.env
        # what the running process really got
        proc_env = h.check_output(f"tr '\\0' '\\n' < /proc/{main_pid(h)}/environ")
        assert f"VLLM_USE_V1={server.env['VLLM_USE_V1']}" in proc_env.splitlines()


def test_port_listening(ti, plans):
    for ip, h in ti.items():
        port = plans[ip].servers[0].port
        assert h.socket(f"tcp://0.0.0.0:{port}").is_listening, ip


def served_name(p) -> str:
    """The plan's --served-model-name (the model id by default: one name across revisions)."""
    args = p.servers[0].args
    return args[args.index("--served-model-name") + 1]


def test_models_endpoint_lists_the_stable_served_name(hosts, plans):
    for hst in hosts:
        p = plans[hst.ip]
        assert served_name(p) == quickstart.HUB_MODEL_ID and p.servers[0].args[p.servers[0].args.index("--model") + 1] == p.model_dir
        r = requests.get(f"http://{hst.ip}:{p.servers[0].port}/v1/models", timeout=30)
        assert r.status_code == 200
        models = r.json()["data"]
        assert [m["id"] for m in models] == [quickstart.HUB_MODEL_ID]  # not the revision folder: stable across revisions
        assert models[0].get("root") == p.model_dir  # vLLM shows the folder it loaded (the revision) as the model's root


def test_chat_completion_with_an_image(hosts, plans):
    for hst in hosts:
        p = plans[hst.ip]
        body = {
            "model": served_name(p),
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png()).decode()}},
                {"type": "text", "text": "Describe the image."},
            ]}],
        }
        r = requests.post(f"http://{hst.ip}:{p.servers[0].port}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] > 20  # the image's tokens are in the prompt
        assert usage["completion_tokens"] >= 1


def test_mineru_client_parses_a_pdf(hosts, tmp_path):
    """`mineru -p sample.pdf -b vlm-http-client -u URL` on the controller, against each server."""
    mineru = client.ensure_client_venv()
    pdf = make_sample_pdf(tmp_path / "sample.pdf")
    for hst in hosts:
        url = f"http://{hst.ip}:30000"
        assert len(client.server_models(url)) == 1  # the client exits 0 even when it cannot connect
        out = tmp_path / f"out-{hst.name}"
        r = client.run_client(mineru, pdf, url, out)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "Failed to connect" not in r.stderr
        files = client.check_outputs(out, "sample")  # the .md, content list, layout PDF, middle/model JSON
        assert files


def test_hardening_exposure(ti):
    for ip, h in ti.items():
        # the sandbox inventory lists the controller as client network: the allow-list is in the unit
        # (systemd-nspawn does not enforce it: presence, not effect)
        unit = h.file("/etc/systemd/system/mineru-vllm@.service").content_string
        assert "IPAddressDeny=any" in unit and f"IPAddressAllow=localhost" in unit, unit[-800:]
        out = h.check_output(f"systemd-analyze security --no-pager {UNIT}.service")
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
        assert m and float(m.group(1)) <= 2.0, out[-500:]


def summary(output: str) -> tuple[int, int]:
    """(operations with a change, operations) from pyinfra's result table."""
    m = re.search(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert m, output[-3000:]
    total, success = int(m.group(1)), m.group(2)
    return (0 if success == "-" else int(success)), total


def run_deploy(inventory) -> str:
    r = subprocess.run([sys.executable, "-m", "pyinfra", str(inventory), "deploy.py", "-y"], cwd=quickstart.REPO,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return r.stdout + r.stderr


def test_second_deploy_changes_nothing_and_restarts_nothing(ti):
    before = {ip: main_pid(h) for ip, h in ti.items()}
    changed, total = summary(run_deploy(quickstart.INVENTORY))
    assert total > 0 and changed == 0
    assert {ip: main_pid(h) for ip, h in ti.items()} == before


def test_a_no_op_run_still_repairs_drift_it_no_longer_asks_about_one_by_one(ti):
    """A converged host gets no file operation (roles/batch.py reads every managed path in one command), so drift
    must still be seen in that one read: content, mode, owner and a link target, each repaired; no restart (none
    of these feeds a restart)."""
    ip, h = next(iter(ti.items()))
    tool = "/opt/mineru-fleet/bin/mineru-fleet-compilecache"
    gate = "/opt/mineru-fleet/bin/mineru-fleet-ready"
    home = "/var/lib/mineru-fleet/home"
    current = "/var/lib/mineru-fleet/deployments/current"
    good = {p: h.check_output(f"sha1sum {p} | cut -d' ' -f1") for p in (tool, gate)}
    record = h.check_output(f"readlink {current}")
    pid = main_pid(h)
    h.check_output(f"printf '#' >> {tool} && chmod 777 {gate} && chown root:root {home} && ln -sfn elsewhere {current}")
    out = run_deploy(quickstart.INVENTORY)
    changed, _ = summary(out)
    assert changed >= 4, out[-3000:]
    for p, sha in good.items():
        assert h.check_output(f"sha1sum {p} | cut -d' ' -f1") == sha
    assert h.file(gate).mode == 0o755
    assert h.file(home).user == "mineru" and h.file(home).mode == 0o700
    assert h.check_output(f"readlink {current}") == record
    assert main_pid(h) == pid
    changed, _ = summary(run_deploy(quickstart.INVENTORY))
    assert changed == 0


def test_changing_one_variable_restarts_exactly_that_server(ti, hosts, tmp_path):
    if len(hosts) < 2:
        pytest.skip("needs two sandbox hosts (MINERU_FLEET_E2E_HOSTS=2)")
    first, others = hosts[0], hosts[1:]
    before = {ip: main_pid(h) for ip, h in ti.items()}
    # the same inventory, with max_model_len changed on the first host only
    text = quickstart.INVENTORY.read_text()
    changed_inv = quickstart.INVENTORY.with_name("sandbox_e2e_changed.py")
    changed_inv.write_text(text + f"\nsandbox = [(n, {{**d, 'mineru_max_model_len': 2048}} if n == {first.ip!r} else d) for n, d in sandbox]\n")
    try:
        run_deploy(changed_inv)
        after = {ip: main_pid(h) for ip, h in ti.items()}
        assert after[first.ip] != before[first.ip]
        assert all(after[o.ip] == before[o.ip] for o in others)
        assert "--max-model-len 2048" in ti[first.ip].file(f"/etc/mineru-fleet/{UNIT}.env").content_string
    finally:
        changed_inv.unlink()
        run_deploy(quickstart.INVENTORY)  # back to the committed settings
    assert "--max-model-len 4096" in ti[first.ip].file(f"/etc/mineru-fleet/{UNIT}.env").content_string


def test_shared_inventory_other_deploys_keys_pass_and_our_typo_is_refused(ti):
    """One inventory for many deploys: another deploy's variables change nothing; a typo of ours stops the run
    in preflight with the right suggestion, before any operation."""
    text = quickstart.INVENTORY.read_text()
    shared = quickstart.INVENTORY.with_name("sandbox_e2e_shared.py")
    before = {ip: main_pid(h) for ip, h in ti.items()}
    try:
        shared.write_text(text + "\nsandbox = [(n, {**d, 'node_exporter_version': '1.8.2', 'etcd_version': 'v3.5.17'}) for n, d in sandbox]\n")
        changed, total = summary(run_deploy(shared))
        assert total > 0 and changed == 0
        shared.write_text(text + "\nsandbox = [(n, {**d, 'mineru_tensor_paralel_size': 2}) for n, d in sandbox]\n")
        r = subprocess.run([sys.executable, "-m", "pyinfra", str(shared), "deploy.py", "-y"], cwd=quickstart.REPO,
                           capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode != 0
        assert "mineru_tensor_paralel_size" in out and "did you mean mineru_tensor_parallel_size" in out, out[-3000:]
        assert "Beginning operation run" not in out  # stopped while preparing: no host touched
    finally:
        shared.unlink(missing_ok=True)
    assert {ip: main_pid(h) for ip, h in ti.items()} == before
