"""Example production inventory: two GPU hosts, reached over SSH.

    pyinfra inventory/production.py deploy.py

Variables for every host live in group_data/all.py; per-group overrides go in
group_data/<group>.py (e.g. gpu_turing.py below), per-host ones in the tuple's dict.
Our variables start with ``mineru_``; the same inventory can carry other deploys' data
(``node_exporter_version`` below is left alone).
"""

gpu_turing = [
    ("gpu-2080ti-01.example.internal", {"ssh_user": "deploy", "_sudo": True}),
]

gpu_hopper = [
    ("gpu-h100-01.example.internal", {"ssh_user": "deploy", "_sudo": True, "mineru_max_model_len": 32768,
                                      "node_exporter_version": "1.8.2"}),
]
