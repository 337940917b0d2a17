from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_HOSTS = REPO.parent / "shared" / "fixtures" / "hosts"
OWN_HOSTS = REPO / "tests" / "fixtures" / "hosts"


@pytest.fixture
def hosts_dir() -> Path:
    assert SHARED_HOSTS.is_dir(), f"{SHARED_HOSTS} missing: the shared fixtures must sit beside the checkout"
    return SHARED_HOSTS
