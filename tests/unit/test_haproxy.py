"""The balancer's pure part: server names, the HAProxy config, `show stat` rows, runtime commands, the allow-list."""

from __future__ import annotations

import shlex

import pytest

from mineru_fleet.controller.balancer import balancer_entries
from mineru_fleet.core import haproxy
from mineru_fleet.core.rollout import Balancer, Server
from mineru_fleet.core.settings import Settings, SettingsError, load_settings
from tests.conftest import FIXTURES

SHOW_STAT = (FIXTURES / "haproxy" / "show-stat.csv").read_text()


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, instance, name", [
    ("mf1", 0, "mf1_0"),
    ("192.168.250.6", 1, "192.168.250.6_1"),
    ("gpu-1.dc2.example", 3, "gpu-1.dc2.example_3"),
    ("gpu_a", 0, "gpu-a_0"),          # _ separates the instance
    ("héllo", 0, "h-llo_0"),          # HAProxy takes letters, digits, - _ . : only
    ("a/b", 2, "a-b_2"),
])
def test_server_name_is_readable_and_maps_back(host, instance, name):
    s = Server(host, instance)
    assert haproxy.server_name(s) == name
    assert haproxy.server_for(name, [Server("other", 0), s]) == s
    assert haproxy.server_for(name, [Server("other", 0)]) is None


def test_backend_servers_sorted_like_the_fleet_and_collisions_refused():
    bs = haproxy.backend_servers([("mf10", 0, "10.0.0.10", 30000), ("mf2", 1, "10.0.0.2", 30001), ("mf2", 0, "10.0.0.2", 30000)])
    assert [b.name for b in bs] == ["mf2_0", "mf2_1", "mf10_0"]
    assert bs[0].endpoint == "10.0.0.2:30000"
    with pytest.raises(haproxy.HAProxyError, match="would both be named 'gpu-a_0'"):
        haproxy.backend_servers([("gpu_a", 0, "10.0.0.1", 30000), ("gpu-a", 0, "10.0.0.2", 30000)])
    with pytest.raises(haproxy.HAProxyError, match="both at 10.0.0.1:30000"):
        haproxy.backend_servers([("a", 0, "10.0.0.1", 30000), ("b", 0, "10.0.0.1", 30000)])
    assert haproxy.backend_servers([("v6", 0, "2001:db8::5", 30000)])[0].endpoint == "[2001:db8::5]:30000"


def test_backend_address_order_and_refusals():
    s = Settings()
    assert haproxy.backend_address("gpu-1", {}, s) == "gpu-1"
    assert haproxy.backend_address("gpu-1", {"ssh_hostname": "10.0.0.5"}, s) == "10.0.0.5"
    s2 = load_settings({"mineru_balancer_backend_address": "10.9.9.9"}, "gpu-1")
    assert haproxy.backend_address("gpu-1", {"ssh_hostname": "10.0.0.5"}, s2) == "10.9.9.9"
    with pytest.raises(haproxy.HAProxyError, match="mineru_balancer_backend_address"):
        haproxy.backend_address("gpu-1", {"ssh_hostname": "10.0.0.5 #x"}, s)
    with pytest.raises(haproxy.HAProxyError, match="inventory host name"):
        haproxy.backend_address("@local", {}, s)


@pytest.mark.parametrize("groups, universal, roles", [
    (["balancers"], [], (False, True)),
    (["balancers", "sandbox"], ["sandbox"], (False, True)),   # the inventory-file group holds every host
    (["balancers", "gpu"], [], (True, True)),
    (["gpu", "all"], [], (True, False)),
    ([], [], (True, False)),
    (["balancers"], ["balancers"], (False, True)),            # an inventory of balancers only
])
def test_roles_of(groups, universal, roles):
    assert haproxy.roles_of(groups, universal) == roles


def test_balancer_entries_of_an_inventory():
    hosts = [
        {"name": "10.0.0.1", "groups": ["sandbox", "x"], "data": {}},
        {"name": "10.0.0.2", "groups": ["sandbox", "x"], "data": {}},
        {"name": "10.0.0.9", "groups": ["balancers", "x"], "data": {}},
    ]
    assert [h["name"] for h in balancer_entries(hosts)] == ["10.0.0.9"]


# --- the config -------------------------------------------------------------------------------


def _servers():
    return haproxy.backend_servers([("192.168.254.6", 0, "192.168.254.6", 30000), ("gpu_b", 1, "2001:db8::7", 30001)])


def test_config_has_what_the_fleet_needs():
    cfg = haproxy.render_config(Settings(), _servers())
    lines = [ln.strip() for ln in cfg.splitlines()]
    for want in (
        "stats socket /run/haproxy/admin.sock mode 600 level admin",
        "bind 0.0.0.0:8000",
        "balance leastconn",
        "option httpchk GET /health",
        "http-check expect status 200",
        "retries 3",
        "option redispatch",
        "timeout server 600s",
        "timeout client 600s",
        "timeout connect 5s",
        "option idle-close-on-response",
        "load-server-state-from-file global",
        "server-state-file /var/lib/haproxy/server-state",
        "default-server check inter 2000ms fall 3 rise 2 init-addr libc",
        "server 192.168.254.6_0 192.168.254.6:30000",
        "server gpu-b_1 [2001:db8::7]:30001",
    ):
        assert want in lines, (want, cfg)
    assert not any(ln.startswith("retry-on") for ln in lines)  # the default: conn-failure only, never a replayed request
    assert cfg.endswith("\n") and "\n\n\n" not in cfg


def test_config_follows_the_variables():
    s = load_settings({"mineru_balancer_bind": "::", "mineru_balancer_port": 443, "mineru_balancer_server_timeout_s": 1800,
                       "mineru_balancer_check_inter_ms": 500, "mineru_balancer_check_fall": 5, "mineru_balancer_check_rise": 1,
                       "mineru_balancer_server_maxconn": 8, "mineru_balancer_connect_timeout_s": 2}, "lb")
    cfg = haproxy.render_config(s, [])
    assert "bind [::]:443" in cfg and "timeout server 1800s" in cfg and "timeout connect 2s" in cfg
    assert "default-server check inter 500ms fall 5 rise 1 init-addr libc maxconn 8" in cfg
    assert "\n    server " not in cfg  # no serving host: a backend without servers (HAProxy answers 503)


@pytest.mark.parametrize("data, var", [
    ({"mineru_balancer_port": 0}, "mineru_balancer_port"),
    ({"mineru_balancer_port": 70000}, "mineru_balancer_port"),
    ({"mineru_balancer_bind": "0.0.0.0 ssl"}, "mineru_balancer_bind"),
    ({"mineru_balancer_server_timeout_s": 0}, "mineru_balancer_server_timeout_s"),
    ({"mineru_balancer_check_fall": 0}, "mineru_balancer_check_fall"),
    ({"mineru_balancer_check_inter_ms": 10}, "mineru_balancer_check_inter_ms"),
    ({"mineru_balancer_backend_address": "10.0.0.1\nserver x"}, "mineru_balancer_backend_address"),
    ({"mineru_balancer_server_maxconn": 0}, "mineru_balancer_server_maxconn"),
    ({"mineru_balancer_prot": 8000}, "did you mean mineru_balancer_port"),
])
def test_bad_balancer_variables_are_refused(data, var):
    with pytest.raises(SettingsError) as e:
        load_settings(data, "lb1")
    assert var in str(e.value)


def test_a_name_that_is_not_one_word_never_reaches_the_config():
    bad = haproxy.BackendServer(Server("x", 0), "x_0 check inter 1", "10.0.0.1", 30000)
    with pytest.raises(haproxy.HAProxyError):
        haproxy.render_config(Settings(), [bad])


# --- the runtime API --------------------------------------------------------------------------


def test_parse_show_stat_of_haproxy_3_0():
    rows = haproxy.parse_show_stat(SHOW_STAT)
    servers = haproxy.servers_of(rows)
    assert sorted(servers) == ["192.168.254.10_0", "192.168.254.6_0"]
    a = servers["192.168.254.6_0"]
    assert (a.pxname, a.status, a.check_status, a.weight) == ("mineru", "UP", "L7OK", 1)
    assert isinstance(a.scur, int) and isinstance(a.qcur, int) and isinstance(a.stot, int)
    assert a.balancer is Balancer.UP and a.fields["check_code"] == "200"
    assert {r.svname for r in rows if not r.is_server} == {"FRONTEND", "BACKEND"}


def test_parse_show_stat_reads_fields_by_name_and_refuses_other_output():
    text = "# svname_x\n"
    with pytest.raises(haproxy.HAProxyError):
        haproxy.parse_show_stat(text)
    with pytest.raises(haproxy.HAProxyError, match="Permission denied"):
        haproxy.parse_show_stat("Permission denied\n")
    rows = haproxy.parse_show_stat("# pxname,svname,status,scur,qcur,weight\nmineru,a_0,DRAIN,0,0,0\nmineru,b_0,MAINT,,,1\n")
    assert [(r.balancer, r.idle) for r in rows] == [(Balancer.DRAIN, True), (Balancer.MAINT, False)]


def test_runtime_commands_are_quoted_and_checked():
    assert haproxy.set_state_command("192.168.254.6_0", "maint") == "set server mineru/192.168.254.6_0 state maint"
    with pytest.raises(haproxy.HAProxyError):
        haproxy.set_state_command("a_0", "down")
    with pytest.raises(haproxy.HAProxyError):
        haproxy.set_state_command("a_0; shutdown sessions", "ready")
    shell = haproxy.runtime_shell("set server mineru/a_0 state drain")
    words = shlex.split(shell)
    assert words[:3] == ["printf", "%s\\n", "set server mineru/a_0 state drain"]
    assert words[-1] == "UNIX-CONNECT:/run/haproxy/admin.sock"
    with pytest.raises(haproxy.HAProxyError):
        haproxy.runtime_shell("show stat; shutdown frontend mineru_api")
    assert haproxy.runtime_error("") is None
    assert haproxy.runtime_error("No such server.\n")


def test_reload_shell_saves_the_state_then_reloads_never_restarts():
    sh = haproxy.save_state_and_reload_shell()
    assert "show servers state" in sh and "systemctl reload haproxy.service" in sh and "restart" not in sh
    assert sh.index("show servers state") < sh.index("systemctl reload")


# --- the balancers in the servers' allow-list -------------------------------------------------


def test_host_addresses_leave_out_loopback_and_link_local():
    got = haproxy.host_addresses({"lo": ["127.0.0.1"], "host0": ["192.168.254.250"]}, {"lo": ["::1"], "host0": ["fe80::1"]})
    assert got == ["192.168.254.250"]


def test_with_balancers_only_when_the_allow_list_is_on():
    open_ = Settings()
    assert haproxy.with_balancers(open_, ["10.9.0.1"]) is open_
    s = load_settings({"mineru_client_networks": ["192.168.254.5"]}, "h")
    assert haproxy.with_balancers(s, ["192.168.254.250", "2001:db8::1"]).balancers == ["192.168.254.250/32", "2001:db8::1/128"]
    covered = load_settings({"mineru_client_networks": ["10.0.0.0/8"], "mineru_balancers": ["192.0.2.7"]}, "h")
    assert haproxy.with_balancers(covered, ["10.1.2.3", "192.0.2.7"]) is covered


def test_plan_and_diagnose_gather_only_the_serving_hosts():
    from mineru_fleet.controller.gather import serving_hosts

    hosts = [
        {"name": "10.0.0.1", "groups": ["sandbox"], "data": {}},
        {"name": "10.0.0.9", "groups": ["balancers"], "data": {}},
        {"name": "10.0.0.8", "groups": ["balancers", "gpu"], "data": {}},
    ]
    assert [h["name"] for h in serving_hosts(hosts)] == ["10.0.0.1", "10.0.0.8"]
