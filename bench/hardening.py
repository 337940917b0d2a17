"""Which extra systemd hardening options vLLM 0.10.2 (CPU build) cannot run under, one at a time.

    uv run python bench/hardening.py [SANDBOX_HOST]      (a deployed sandbox host, e.g. mf2)

For each option: a drop-in on mineru-vllm@0, restart (the unit's readiness gate decides), the
first error line of the journal, then the drop-in is removed and the server restarted as deployed.
Also prints `systemd-analyze security` of the deployed unit. Results go to bench/README.md by hand.
"""

from __future__ import annotations

import re
import sys
import time

from mineru_fleet import sandbox

UNIT = "mineru-vllm@0.service"
DROPIN = f"/etc/systemd/system/{UNIT}.d/zz-probe.conf"
CANDIDATES = [
    "ProcSubset=pid",
    "MemoryDenyWriteExecute=yes",
    "SystemCallFilter=~@resources",
    "RestrictAddressFamilies=\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "PrivateNetwork=yes",
    "IPAddressDeny=any",
]
ERR = re.compile(r"(\w+Error: |Errno|Fatal|cannot |Aborted|not supported|terminate called)")


def sh(host: str, cmd: str, timeout: float = 900):
    return sandbox.ssh(host, cmd, check=False, timeout=timeout)


def probe(host: str, option: str) -> tuple[bool, float, str]:
    # Restart=no: one attempt per option; reset-failed: the start limit must not answer for it
    sh(host, f"mkdir -p $(dirname {DROPIN}) && printf '[Service]\\nRestart=no\\n{option}\\n' > {DROPIN}"
             f" && systemctl daemon-reload && systemctl stop {UNIT}; systemctl reset-failed {UNIT}")
    t = time.monotonic()
    r = sh(host, f"timeout 400 systemctl start {UNIT}")
    took = time.monotonic() - t
    ok = r.returncode == 0
    first = ""
    if not ok:
        inv = sh(host, f"systemctl show -p InvocationID --value {UNIT}").stdout.strip()
        j = sh(host, f"journalctl _SYSTEMD_INVOCATION_ID={inv} --no-pager -o cat").stdout.splitlines()
        first = next((line.strip() for line in j if ERR.search(line)), j[-1] if j else "")
    return ok, took, first[:200]


def main(argv: list[str]) -> int:
    host = argv[0] if argv else "mf1"
    print(sh(host, f"systemd-analyze security --no-pager {UNIT} | tail -1").stdout.strip())
    rows = []
    try:
        for opt in CANDIDATES:
            ok, took, err = probe(host, opt)
            label = opt.replace("\n", " then ")
            rows.append((label, ok, took, err))
            print(f"| `{label}` | {'serves' if ok else 'FAILS'} ({took:.0f} s) | {err} |", flush=True)
    finally:
        sh(host, f"rm -f {DROPIN} && systemctl daemon-reload && systemctl reset-failed {UNIT}; systemctl restart {UNIT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
