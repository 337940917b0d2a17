import pytest

from mineru_fleet.core.settings import (
    DEFAULTS, Settings, SettingsError, group_data_template, inventory_warnings, load_settings, parse_data_args, variable_table,
)


def test_defaults_documented_and_valid():
    s = load_settings({}, "h")
    assert s.gpu_memory_utilization == 0.5 and s.port == 30000 and s.tensor_parallel_size is None
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
    assert DEFAULTS["port"] == 30000


def test_foreign_keys_are_ignored():
    load_settings({"ssh_user": "root", "_sudo": True, "controller_ip": "1.2.3.4"}, "h")


def test_an_inventory_shared_with_other_deploys_loads():
    data = {"node_exporter_version": "1.8.2", "etcd_version": "3.5", "etcd_cluster_token": "x", "ssh_user": "deploy",
            "mineru_tensor_parallel_size": 2, "mineru_port": 31000}
    s = load_settings(data, "h")
    assert (s.tensor_parallel_size, s.port) == (2, 31000)
    assert inventory_warnings(data) == []


def test_unknown_key_of_ours_suggests_the_right_one():
    with pytest.raises(SettingsError) as e:
        load_settings({"mineru_tensor_paralel_size": 2}, "gpu-7")
    assert "gpu-7" in str(e.value) and "did you mean mineru_tensor_parallel_size?" in str(e.value)


def test_old_unprefixed_names_warn_and_are_not_read():
    data = {"tensor_parallel_size": 2, "port": 31000}
    s = load_settings(data, "h")
    assert s.tensor_parallel_size is None and s.port == 30000  # not ours: left to whoever owns it
    warnings = inventory_warnings(data)
    assert len(warnings) == 2 and "did you mean mineru_tensor_parallel_size?" in warnings[0] and "mineru_port" in warnings[1]


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"tensor_parallel_size": "two"}, "tensor_parallel_size"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.01}, "gpu_memory_utilization"),
        ({"port": 80}, "port"),
        ({"gpus": [0, 0]}, "gpus"),
        ({"gpus": []}, "gpus"),
        ({"extra_env": {"HF_TOKEN": "x"}}, "secret"),
        ({"profile": "gpu"}, "profile"),
    ],
)
def test_bad_values_name_the_variable(data, needle):
    with pytest.raises(SettingsError) as e:
        load_settings({"mineru_" + k: v for k, v in data.items()}, "h1")
    assert needle in str(e.value) and "h1" in str(e.value)


def test_data_args_use_inventory_names_and_types():
    d = parse_data_args(["mineru_tensor_parallel_size=2", "gpu_memory_utilization=0.3", "mineru_gpus=0,1", "vllm_use_v1=true",
                         "host=127.0.0.1"])
    assert d == {"mineru_tensor_parallel_size": 2, "mineru_gpu_memory_utilization": 0.3, "mineru_gpus": [0, 1],
                 "mineru_vllm_use_v1": True, "mineru_host": "127.0.0.1"}
    with pytest.raises(SettingsError):
        parse_data_args(["novalue"])
    with pytest.raises(SettingsError, match="did you mean mineru_max_model_len"):  # a typo on the command line is ours too
        load_settings(parse_data_args(["max_model_lenn=4096"]), "h")


def test_readme_documents_every_variable_with_its_default():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    assert variable_table() in readme, "README's variable table differs from settings.py: uv run python -m mineru_fleet.core.settings table"
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        assert f"| `mineru_{name}` | `{default!r}` |" in readme, f"README's variable table lacks mineru_{name} (default {default!r})"


def test_group_data_all_is_generated_from_settings():
    from tests.conftest import REPO

    assert (REPO / "inventory/group_data/all.py").read_text() == group_data_template(), (
        "inventory/group_data/all.py drifted: uv run python -m mineru_fleet.core.settings group-data > inventory/group_data/all.py")
    ns: dict = {}
    exec(group_data_template(), ns)  # valid Python that sets nothing: every variable is commented out
    assert not [k for k in ns if k.startswith("mineru_")]


def test_sandbox_and_example_inventories_use_only_known_names():
    import runpy

    from tests.conftest import REPO

    for f in ("inventory/group_data/sandbox.py", "inventory/group_data/gpu_turing.py"):
        data = {k: v for k, v in runpy.run_path(str(REPO / f)).items() if not k.startswith("_")}
        assert data and all(k.startswith("mineru_") for k in data), f
        load_settings(data, f)
    hosts = runpy.run_path(str(REPO / "inventory/production.py"))
    for group in ("gpu_turing", "gpu_hopper"):
        for name, data in hosts[group]:
            load_settings(data, name)
            assert inventory_warnings(data) == []


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("MODELSCOPE_API_TOKEN", True), ("--api-key", True), ("DB_PASSWORD", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("--max-num-batched-tokens", False), ("--tokenizer", False), ("--tokenizer-mode", False), ("VLLM_MAX_TOKENS", False),
])
def test_secret_names_are_words_not_substrings(name, secret):
    from mineru_fleet.core.settings import looks_secret

    assert looks_secret(name) is secret


def test_a_vllm_flag_with_tokens_in_its_name_is_accepted():
    s = load_settings({"mineru_extra_args": ["--max-num-batched-tokens", "8192", "--tokenizer-mode", "auto"]}, host="h")
    assert s.extra_args == ["--max-num-batched-tokens", "8192", "--tokenizer-mode", "auto"]
