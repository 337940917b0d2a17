"""The sandbox's balancer host on paper: its place in the inventory, the client files and the routes (no host booted)."""

from __future__ import annotations

import contextlib
import runpy

import pytest

from mineru_fleet.sandbox.config import BALANCER_INDEX, ROUTES_MARKER, SandboxConfig, host_dir, host_for
from mineru_fleet.sandbox.network import ROUTE_DROPIN, connect_balancer, disconnect_balancer, write_client_files


@pytest.fixture(autouse=True)
def _no_leftover_ssh_folder(tmp_path):
    yield
    with contextlib.suppress(OSError):
        _cfg(tmp_path).control_dir.rmdir()  # write_client_files makes it under the temp folder


def _cfg(tmp_path) -> SandboxConfig:
    return SandboxConfig(repo=tmp_path, prefix="tb", net_prefix="192.168.249", port=8799, run_name="run-unit",
                         inventory_path=tmp_path / "inventory" / "sandbox.py")


def test_without_a_balancer_the_inventory_is_as_before(tmp_path):
    cfg = _cfg(tmp_path)
    hosts = [host_for(cfg, 1), host_for(cfg, 2)]
    assert not any(h.balancer for h in hosts)
    write_client_files(cfg, hosts)
    text = cfg.inventory.read_text()
    assert "balancers" not in text
    assert [n for n, _ in runpy.run_path(str(cfg.inventory))["sandbox"]] == ["192.168.249.6", "192.168.249.10"]


def test_the_balancer_host_is_in_group_balancers_only(tmp_path):
    cfg = _cfg(tmp_path)
    bal = host_for(cfg, BALANCER_INDEX)
    assert bal.balancer and bal.name == "tb62" and bal.ip == "192.168.249.250"
    write_client_files(cfg, [host_for(cfg, 1), host_for(cfg, 2), bal])
    inv = runpy.run_path(str(cfg.inventory))
    assert [n for n, _ in inv["sandbox"]] == ["192.168.249.6", "192.168.249.10"]
    (name, data), = inv["balancers"]
    assert name == bal.ip and not any(k.startswith("mineru_") for k in data)  # the balancer variables' defaults
    assert bal.ip not in (cfg.run / "testinfra_hosts.txt").read_text()
    assert "Host tb62" in cfg.ssh_config.read_text()


def test_routes_go_through_the_controller_and_are_undone(tmp_path):
    cfg = _cfg(tmp_path)
    hosts = [host_for(cfg, 1), host_for(cfg, 2), host_for(cfg, BALANCER_INDEX)]
    for h in hosts:
        (host_dir(cfg, h.name) / "root").mkdir(parents=True)
    connect_balancer(cfg, hosts)  # no leader pid, no veth here: only the files
    drop = {h.name: (host_dir(cfg, h.name) / "root" / ROUTE_DROPIN).read_text() for h in hosts}
    assert drop["tb62"] == "[Route]\nDestination=192.168.249.0/24\nGateway=192.168.249.249\n"
    assert drop["tb1"] == "[Route]\nDestination=192.168.249.250/32\nGateway=192.168.249.5\n"
    assert (cfg.run / ROUTES_MARKER).exists()
    disconnect_balancer(cfg, hosts[:2], hosts[2])
    assert not (host_dir(cfg, "tb1") / "root" / ROUTE_DROPIN).exists() and not (cfg.run / ROUTES_MARKER).exists()
    connect_balancer(cfg, hosts[:2])  # no balancer: nothing to route
    assert not (cfg.run / ROUTES_MARKER).exists()
