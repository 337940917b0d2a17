"""Example production inventory: two GPU hosts, reached over SSH.

    pyinfra inventory/production.py deploy.py

Variables for every host live in group_data/all.py; per-group overrides go in
group_data/<group>.py (e.g. gpu_turing.py below), per-host ones in the tuple's dict.
"""

gpu_turing = [
    ("gpu-2080ti-01.example.internal", {"ssh_user": "deploy", "_sudo": True}),
]

gpu_hopper = [
    ("gpu-h100-01.example.internal", {"ssh_user": "deploy", "_sudo": True}),
]
