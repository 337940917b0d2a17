from pathlib import Path

import pytest

from mineru_fleet.paths import EXAMPLE_HOSTS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture
def hosts_dir() -> Path:
    """The example facts folders the README's commands use (``examples/hosts/``)."""
    assert EXAMPLE_HOSTS.is_dir(), f"{EXAMPLE_HOSTS} missing"
    return EXAMPLE_HOSTS
