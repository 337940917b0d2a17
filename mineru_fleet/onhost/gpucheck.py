"""Post-install GPU check, run with the release venv's Python on the host (stdlib + torch only).

    CUDA_VISIBLE_DEVICES=0,1 /opt/mineru-fleet/releases/<id>/venv/bin/python gpucheck.py \
        --expect-gpus 2 --expect-nccl 2.27.3

Prints one JSON object {"probe": {...}, "problems": [...]} and exits 1 when torch does not see
every planned GPU or bundles another NCCL than the lock pins (a wrong wheel would fail later,
mid-load, with a far less clear error).
"""

from __future__ import annotations

import argparse
import json
import sys


def probe() -> dict:
    """What the venv's torch sees: versions, NCCL, and each visible device."""
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:  # no NCCL in this build
        out["nccl"] = None
        out["nccl_error"] = str(e)
    devices = []
    if out["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                {"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}", "total_memory": p.total_memory}
            )
    out["devices"] = devices
    return out


def problems(found: dict, expect_gpus: int, expect_nccl: str | None) -> list[str]:
    """Compare a probe with the plan; each problem says what was expected and what was found."""
    out = []
    if not found.get("cuda_available"):
        out.append("torch cannot use CUDA (torch.cuda.is_available() is False): check the driver and CUDA_VISIBLE_DEVICES")
    elif len(found.get("devices", [])) != expect_gpus:
        out.append(f"torch sees {len(found['devices'])} GPU(s), the plan uses {expect_gpus}")
    if expect_nccl and found.get("nccl") != expect_nccl:
        out.append(
            f"torch {found.get('torch')} bundles NCCL {found.get('nccl')}, the lock pins NCCL {expect_nccl}: "
            "this venv is not the one the lock describes"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expect-gpus", type=int, required=True)
    ap.add_argument("--expect-nccl", default=None)
    a = ap.parse_args(argv)
    found = probe()
    bad = problems(found, a.expect_gpus, a.expect_nccl)
    print(json.dumps({"probe": found, "problems": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
