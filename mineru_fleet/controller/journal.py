"""pyinfra fact: a unit's journal since its last start (for ``mineru-fleet diagnose --host``).

The last start is the unit's current ``InvocationID``: ``journalctl _SYSTEMD_INVOCATION_ID=ID``
(the server's own lines) ``+ INVOCATION_ID=ID`` (systemd's lines about that start). Without an
invocation (never started) it falls back to the unit's last 5000 lines; the parser then picks the
last start itself. ``-a`` keeps lines with control characters (vLLM's multi-line messages end in
``\\r``) instead of ``[N blob data]``.

Example::

    from mineru_fleet.controller.journal import UnitJournal
    host.get_fact(UnitJournal, unit="mineru-vllm@0")
    {"unit": "mineru-vllm@0", "invocation": "75fc...", "active": "active", "lines": ["2026-11-25T15:34:49+00:00 mf1 systemd[1]: Starting ...", ...]}
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

MARK = "##MINERU-FLEET-JOURNAL## "


def journal_script(unit: str, max_lines: int = 5000) -> str:
    u = shlex.quote(unit)
    return "\n".join(
        [
            "export LC_ALL=C SYSTEMD_COLORS=0",
            f"inv=$(systemctl show -p InvocationID --value {u} 2>/dev/null)",
            f"state=$(systemctl show -p ActiveState --value {u} 2>/dev/null)",
            f"echo '{MARK}invocation' \"$inv\"",
            f"echo '{MARK}active' \"$state\"",
            f"echo '{MARK}lines'",
            'if [ -n "$inv" ]; then',
            '  journalctl --no-pager -a -o short-iso _SYSTEMD_INVOCATION_ID="$inv" + INVOCATION_ID="$inv" 2>&1',
            "else",
            f"  journalctl --no-pager -a -o short-iso -u {u} -n {max_lines} 2>&1",
            "fi",
            "true",
        ]
    )


class UnitJournal(FactBase):
    """The journal of one systemd unit since its last start, as ``{"unit", "invocation", "active", "lines"}``."""

    def command(self, unit: str = "mineru-vllm@0") -> str:
        self._unit = unit
        return "sh -c " + shlex.quote(journal_script(unit))

    def process(self, output: list[str]) -> dict:
        out = {"unit": getattr(self, "_unit", None), "invocation": None, "active": None, "lines": []}
        body = False
        for line in output:
            if body:
                out["lines"].append(line)
            elif line.startswith(MARK + "invocation"):
                out["invocation"] = line[len(MARK + "invocation") :].strip() or None
            elif line.startswith(MARK + "active"):
                out["active"] = line[len(MARK + "active") :].strip() or None
            elif line.startswith(MARK + "lines"):
                body = True
        return out
