"""Programs copied to and run on the hosts: standard library only, each runnable alone.

``ready.py`` (the readiness gate, ``mineru-fleet-ready``), ``gpucheck.py`` (torch and NCCL as the
release sees them, ``mineru-fleet-gpucheck``), ``modelfetch.py`` (ModelScope download step and the
verified, atomic install of a model revision, ``mineru-fleet-modelfetch``).
"""
