"""Test modules have unique basenames: pytest imports them by basename (no packages), so a second
``test_x.py`` in another folder stops the whole run at collection."""

from collections import Counter

from mineru_fleet.paths import REPO


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
