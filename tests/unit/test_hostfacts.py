"""Parsers on every fixture file (the example hosts in examples/hosts/)."""


import pytest

from mineru_fleet.controller.factsdir import load_host_facts, read_facts_dir, write_facts_dir
from mineru_fleet.core.hostfacts import (
    FactsError,
    build_host_facts,
    parse_driver_cuda,
    parse_extra,
    parse_fib_trie_locals,
    parse_glibcxx,
    parse_listening,
    parse_net,
    parse_os,
    parse_query_gpu,
    parse_topo_matrix,
)
from mineru_fleet.controller.facts import split_marked, _script
from mineru_fleet.paths import EXAMPLE_HOSTS

GIB = 1024**3


def read(host: str, name: str) -> str:
    base = EXAMPLE_HOSTS
    return (base / host / name).read_text()


def test_query_gpu_seed():
    gpus = parse_query_gpu(read("seed-2x2080ti", "query-gpu.csv"))
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].compute_capability == (7, 5)
    assert gpus[0].reserved_mib == 512
    assert gpus[0].cuda_visible_mib == 22016  # ~21.5 GiB, as the log says
    assert gpus[1].uuid.startswith("GPU-c2e47a10")
    assert gpus[0].bus_id == "00000000:01:00.0"
    assert gpus[0].driver_version == "570.133.07"


@pytest.mark.parametrize("host", ["h100-1x", "h100-live"])
def test_query_gpu_h100(host):
    (g,) = parse_query_gpu(read(host, "query-gpu.csv"))
    assert g.name == "NVIDIA H100 80GB HBM3"
    assert g.compute_capability == (9, 0)
    assert g.reserved_mib == 480
    assert g.cuda_visible_mib == 81079  # what the host's torch reports as total
    assert g.persistence_mode == "Enabled" and g.mig_mode == "Disabled"


def test_query_gpu_header_form_equals_noheader():
    assert parse_query_gpu(read("seed-2x2080ti", "query-gpu-header.csv")) == parse_query_gpu(
        read("seed-2x2080ti", "query-gpu.csv")
    )
    assert parse_query_gpu(read("h100-1x", "query-gpu-header.csv")) == parse_query_gpu(read("h100-1x", "query-gpu.csv"))


def test_query_gpu_garbage_names_file_and_line():
    with pytest.raises(FactsError, match=r"query-gpu.csv:1"):
        parse_query_gpu("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")


def test_driver_cuda():
    assert parse_driver_cuda(read("seed-2x2080ti", "driver-cuda.txt")) == ("570.133.07", (12, 8))
    assert parse_driver_cuda(read("h100-1x", "driver-cuda.txt")) == ("580.159.04", (13, 0))
    assert parse_driver_cuda(read("h100-1x", "nvidia-smi.txt")) == ("580.159.04", (13, 0))


@pytest.mark.parametrize("name", ["topo-p2p-r.txt", "topo-p2p-n.txt"])
def test_p2p_matrix_seed_has_no_p2p(name):
    m = parse_topo_matrix(read("seed-2x2080ti", name))
    assert m == {(0, 0): "X", (0, 1): "NS", (1, 0): "NS", (1, 1): "X"}


def test_topo_m_seed_link_type():
    m = parse_topo_matrix(read("seed-2x2080ti", "topo-m.txt"))
    assert m[(0, 1)] == "PHB" and m[(1, 0)] == "PHB"


@pytest.mark.parametrize("name", ["topo-p2p-r.txt", "topo-p2p-n.txt", "topo-m.txt"])
def test_topo_h100_single_gpu(name):
    assert parse_topo_matrix(read("h100-1x", name))[(0, 0)] == "X"


def test_extra_sections_and_rc():
    extra = parse_extra(read("seed-2x2080ti", "extra.txt"))
    assert extra["getent hosts $(hostname)"] == (2, "")
    assert extra["hostname"] == (0, "buding-PC")


def test_net_seed_default_route_not_docker():
    net = parse_net(parse_extra(read("seed-2x2080ti", "extra.txt")))
    assert net.default_iface == "enp5s0"
    assert net.default_ipv4 == "192.168.1.23"  # not docker0's 172.17.0.1
    assert net.hostname == "buding-PC" and not net.hostname_resolves


@pytest.mark.parametrize("host", ["h100-1x", "h100-live"])
def test_net_h100_loopback_hostname(host):
    net = parse_net(parse_extra(read(host, "extra.txt")))
    assert net.default_iface == "eth0"
    assert net.default_ipv4 == "192.0.2.2"
    assert net.hostname_resolves and net.hostname_is_loopback


def test_fib_trie_locals():
    fib = parse_extra(read("h100-live", "extra.txt"))["cat /proc/net/fib_trie"][1]
    assert parse_fib_trie_locals(fib) == ("127.0.0.1", "192.0.2.2")


def test_glibcxx():
    assert parse_glibcxx(parse_extra(read("seed-2x2080ti", "extra.txt"))) == "3.4.30"
    assert parse_glibcxx(parse_extra(read("h100-1x", "extra.txt"))) == "3.4.33"


def test_os_seed():
    o = parse_os(read("seed-2x2080ti", "os.txt"))
    assert (o.id, o.version_id, o.cpus) == ("ubuntu", "22.04", 16)
    assert o.mem_total_bytes == 67296821248
    assert o.disks[0].target == "/" and o.disks[0].avail_bytes == 552671068160


def test_os_h100_with_trailing_sections_and_df_output_form():
    extra = parse_extra(read("h100-1x", "extra.txt"))
    o = parse_os(read("h100-1x", "os.txt"), extra)
    assert o.kernel == "6.18.44-fc-v657-gpu" and o.cpus == 16
    assert o.mem_total_bytes == 135148564480
    assert [d.target for d in o.disks] == ["/"]


def test_os_garbage():
    with pytest.raises(FactsError, match="nproc"):
        parse_os("ID=debian\n6.1.0\nnot-a-number\n")


def test_listening_ports():
    extra = parse_extra('### ss -Hltnp\nLISTEN 0 4096 0.0.0.0:30000 0.0.0.0:* users:(("python3",pid=9,fd=5))\n'
                        "LISTEN 0 128 [::]:22 [::]:*\n### rc=0\n")
    assert parse_listening(extra) == {30000: "python3", 22: ""}


def test_no_nvidia_smi_means_no_gpus(tmp_path):
    files = read_facts_dir(EXAMPLE_HOSTS / "seed-2x2080ti")
    cpu_files = {k: v for k, v in files.items() if k in ("os.txt", "extra.txt")}
    f = build_host_facts("cpu-host", cpu_files)
    assert not f.has_nvidia_smi and f.gpus == ()


def test_facts_dir_roundtrip(tmp_path):
    files = read_facts_dir(EXAMPLE_HOSTS / "h100-1x")
    write_facts_dir(tmp_path / "copy", files)
    assert load_host_facts(tmp_path / "copy", host="h") == load_host_facts(EXAMPLE_HOSTS / "h100-1x", host="h")


def test_missing_os_txt_is_a_clear_error(tmp_path):
    (tmp_path / "query-gpu.csv").write_text(read("h100-1x", "query-gpu.csv"))
    with pytest.raises(FactsError, match="no os.txt"):
        load_host_facts(tmp_path)


def test_live_script_output_splits_into_facts_files():
    """The fact's own shell script, run here, yields a facts folder the parsers accept."""
    import subprocess

    out = subprocess.run(["sh", "-c", _script(["/opt/mineru-fleet", "/var/lib/mineru-fleet"])], capture_output=True, text=True, check=True)
    files = split_marked(out.stdout.splitlines())
    assert "os.txt" in files and "extra.txt" in files
    f = build_host_facts("here", files)
    assert f.os.cpus >= 1 and f.os.mem_total_bytes > 0
    assert any(d.target == "/" for d in f.os.disks)
    assert f.net.hostname


def test_python_version():
    from mineru_fleet.core.hostfacts import parse_python_version

    assert parse_python_version(parse_extra("### /usr/bin/python3 --version\nPython 3.13.5\n### rc=0\n")) == (3, 13)
    assert parse_python_version(parse_extra("### /usr/bin/python3 --version\nsh: 1: /usr/bin/python3: not found\n### rc=127\n")) is None
