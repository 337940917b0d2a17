"""pyinfra facts of the preflight: one round trip per host gathers every preflight command.

The fact returns ``{file name: raw text}`` in the format of a facts folder
(``examples/hosts/``), so the same parsers read a live host and a saved capture.

Example::

    from mineru_fleet.controller.facts import PreflightFiles
    files = host.get_fact(PreflightFiles, paths=["/opt/mineru-fleet", "/var/lib/mineru-fleet"])
    files["os.txt"]
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from mineru_fleet.core.hostfacts import COMMANDS, EXTRA_COMMANDS, GPU_FILES

MARK = "##MINERU-FLEET-FILE## "


def _script(paths: list[str], user: str = "mineru") -> str:
    """Shell script printing each facts file after a marker line (always exits 0)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    lines = [
        "export LC_ALL=C",
        # nearest existing ancestor of each path, for df
        f'dfpaths=""; for p in {quoted}; do while [ ! -e "$p" ]; do p=$(dirname "$p"); done; dfpaths="$dfpaths $p"; done',
        f"echo '{MARK}os.txt'; {{ {COMMANDS['os.txt']}; }} 2>&1",
        "if command -v nvidia-smi >/dev/null 2>&1; then",
        f"  if out=$({COMMANDS['query-gpu.csv']} 2>&1); then",
        f"    echo '{MARK}query-gpu.csv'; printf '%s\\n' \"$out\"",
    ]
    for name in GPU_FILES[1:]:
        lines.append(f"    echo '{MARK}{name}'; {{ {COMMANDS[name]}; }} 2>&1")
    lines += [
        f"  else echo '{MARK}nvidia-smi-error.txt'; printf '%s\\n' \"$out\"; fi",
        "fi",
        f"echo '{MARK}extra.txt'",
    ]
    for cmd in EXTRA_COMMANDS:
        run = cmd.replace("{paths}", "$dfpaths").replace("{user}", shlex.quote(user))
        lines.append(f'echo "### {run}"' if "{paths}" in cmd else f"echo {shlex.quote('### ' + run)}")
        lines.append(f"{{ {run}; }} 2>&1; echo \"### rc=$?\"")
    lines.append("true")
    return "\n".join(lines)


def split_marked(lines: list[str]) -> dict[str, str]:
    """Split the fact's output at the marker lines into {file name: text}."""
    files: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith(MARK):
            current = line[len(MARK) :].strip()
            files[current] = []
        elif current is not None:
            files[current].append(line)
    return {name: "\n".join(body) + "\n" for name, body in files.items()}


class PreflightFiles(FactBase):
    """Raw output of every preflight command, as ``{file name: text}`` (see ``mineru_fleet.core.hostfacts``).

    Example::

        host.get_fact(PreflightFiles, paths=["/opt/mineru-fleet"])
        {"os.txt": "PRETTY_NAME=...", "query-gpu.csv": "0, GPU-..., ...", "extra.txt": "### ..."}
    """

    def command(self, paths: list[str] | None = None, user: str = "mineru") -> str:
        return "sh -c " + shlex.quote(_script(list(paths or ["/"]), user))

    def process(self, output: list[str]) -> dict[str, str]:
        return split_marked(output)



def _compilecache_program() -> str:
    from mineru_fleet.paths import ONHOST

    return (ONHOST / "compilecache.py").read_text()


class CompileHardware(FactBase):
    """The host's compile hardware (``mineru_fleet/onhost/compilecache.py hardware``), run with ``python3 -c`` so
    that it needs nothing installed; ``{}`` when the host cannot tell (no python3).

    Example::

        host.get_fact(CompileHardware)
        {"arch": "x86_64", "cpu": {"model name": "Intel(R) Xeon(R) ..."}, "cpus": 2, "isa": ["avx2", ...], ...}
    """

    def command(self) -> str:
        return f"python3 -c {shlex.quote(_compilecache_program())} hardware 2>/dev/null || echo '{{}}'"

    def process(self, output: list[str]) -> dict:
        import json

        try:
            value = json.loads("\n".join(output).strip() or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class PrunableClassFolders(FactBase):
    """The class folders ``compilecache.py prune`` would remove under ``root`` (a dry run): a deploy prunes only
    when this is not empty, so a converged host gets no operation.

    Example::

        host.get_fact(PrunableClassFolders, root="/var/lib/mineru-fleet/cache/0/compile", keep=3, protect="ab12...",
                      refs_in=["/etc/mineru-fleet", "/var/lib/mineru-fleet/deployments"])
        ["0f3e...", ".ab12....partial-4711"]
    """

    def command(self, root: str, keep: int, protect: str, refs_in: list[str]) -> str:
        q = shlex.quote
        refs = " ".join(f"--refs-in {q(r)}" for r in refs_in)
        return (f"python3 -c {q(_compilecache_program())} prune --dry-run --root {q(root)} --keep {int(keep)} "
                f"--protect {q(protect)} {refs} 2>/dev/null || true")

    def process(self, output: list[str]) -> list[str]:
        return [line[len("@prune "):] for line in output if line.startswith("@prune ")]


class PathStates(FactBase):
    """Type, mode, owner, SHA-1 (files) or target (links) of each path, and the passwd/group entry of each account,
    in one command (``mineru_fleet.core.pathstate``): ``roles/batch.py`` skips what is already converged.

    Example::

        host.get_fact(PathStates, paths=["/opt/mineru-fleet", "/opt/mineru-fleet/bin/uv"], users=["mineru"])
        {"/opt/mineru-fleet": PathState(kind="directory", mode=0o755, user="root", group="root"), ...,
         ("user", "mineru"): Account(exists=True, fields=("mineru", "x", "999", ...))}
    """

    def command(self, paths: tuple = (), users: tuple = (), groups: tuple = ()) -> str:
        from mineru_fleet.core import pathstate

        return "sh -c " + shlex.quote(pathstate.script(list(paths), list(users), list(groups)))

    def process(self, output: list[str]) -> list[str]:
        return list(output)  # parsed by the caller, who knows the paths it asked for
