"""The pure core: settings, host-fact parsers, the planner, model figures, log diagnosis and unit rendering.

No pyinfra, no subprocess, no socket, no clock: every function here maps data to data, so it is tested
with fixtures alone (``tests/unit/test_layout.py`` checks the rule).
"""
