import pytest

from mineru_fleet.core.settings import DEFAULTS, Settings, SettingsError, load_settings, parse_data_args


def test_defaults_documented_and_valid():
    s = load_settings({}, "h")
    assert s.gpu_memory_utilization == 0.5 and s.port == 30000 and s.tensor_parallel_size is None
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
    assert DEFAULTS["port"] == 30000


def test_foreign_keys_are_ignored():
    load_settings({"ssh_user": "root", "_sudo": True, "controller_ip": "1.2.3.4"}, "h")


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(SettingsError) as e:
        load_settings({"tensor_paralel_size": 2}, "gpu-7")
    assert "gpu-7" in str(e.value) and "tensor_parallel_size" in str(e.value)


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
        load_settings(data, "h1")
    assert needle in str(e.value) and "h1" in str(e.value)


def test_data_args_use_inventory_names_and_types():
    d = parse_data_args(["tensor_parallel_size=2", "gpu_memory_utilization=0.3", "gpus=0,1", "vllm_use_v1=true", "host=127.0.0.1"])
    assert d == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.3, "gpus": [0, 1], "vllm_use_v1": True, "host": "127.0.0.1"}
    with pytest.raises(SettingsError):
        parse_data_args(["novalue"])


def test_readme_documents_every_variable_with_its_default():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        assert f"| `{name}` | `{default!r}` |" in readme, f"README's variable table lacks {name} (default {default!r})"
