"""What a host's files, folders, links and accounts are, read in one command, and whether each is already what
a role wants: the pure half of ``roles/batch.py`` (no I/O here).

A no-op deploy used to spend most of its time in pyinfra asking the host, one SSH command at a time, about each
file an operation manages (a ``files.put`` asks three questions: the file, its folder, its SHA-1). A role now names
everything it converges first; one command (``script``) prints one line per path and account; ``parse`` reads
it; only what differs becomes a pyinfra operation (which checks again, at execute time, as it always did).

Example::

    >>> states = parse(["D 755 root root", "F 644 root root 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "M",
    ...                 "L /opt/mineru-fleet/releases/cpu-1", "U mineru:x:999:999::/var/lib/mf/home:/usr/sbin/nologin",
    ...                 "G mineru:x:999:"],
    ...                ["/opt/mf", "/opt/mf/a.txt", "/opt/mf/b", "/opt/mf/current"], users=["mineru"], groups=["mineru"])
    >>> directory_ok(states["/opt/mf"], user="root", group="root", mode="755")
    True
    >>> file_ok(states["/opt/mf/b"], sha1="0" * 40, mode="644")
    False
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class PathState:
    kind: str                    # "directory", "file", "link", "missing", "other"
    mode: int | None = None      # permission bits (st_mode & 0o7777)
    user: str | None = None      # owner name (UNKNOWN when the uid has no name)
    group: str | None = None
    sha1: str | None = None      # regular files
    target: str | None = None    # links: what readlink prints


@dataclass(frozen=True)
class Account:
    """A passwd or group entry (``getent``): ``exists`` False and no fields when there is none."""

    exists: bool
    fields: tuple[str, ...] = ()


MISSING = PathState("missing")
UNREAD = PathState("other")  # a line the parser could not read: never "already converged"


def script(paths: list[str], users: list[str] = (), groups: list[str] = ()) -> str:
    """Shell (POSIX sh, coreutils) printing one line per path, then per user, then per group, in order; exits 0.

    ``D mode user group`` a folder, ``F mode user group sha1`` a regular file, ``L target`` a link (not followed),
    ``M`` nothing there, ``O`` anything else; ``U passwd-entry`` / ``G group-entry``, or ``U`` / ``G`` alone when
    there is none.
    """
    q = " ".join(shlex.quote(p) for p in paths)
    parts = ["export LC_ALL=C"]
    if paths:
        parts.append(
            f"for p in {q}; do "
            'if [ -L "$p" ]; then printf "L %s\\n" "$(readlink -- "$p")"; '
            'elif [ -d "$p" ]; then printf "D %s\\n" "$(stat -c "%a %U %G" -- "$p")"; '
            'elif [ -f "$p" ]; then printf "F %s %s\\n" "$(stat -c "%a %U %G" -- "$p")" '
            '"$(sha1sum < "$p" 2>/dev/null | cut -d" " -f1)"; '
            'elif [ -e "$p" ]; then echo O; else echo M; fi; done'
        )
    for word, names in (("passwd", users), ("group", groups)):
        letter = "U" if word == "passwd" else "G"
        for n in names:
            parts.append(f'printf "{letter} %s\\n" "$(getent {word} {shlex.quote(n)} 2>/dev/null | head -n1)"')
    parts.append("true")
    return "; ".join(parts)


def _path_line(line: str) -> PathState:
    kind, _, rest = line.partition(" ")
    try:
        if kind == "M":
            return MISSING
        if kind == "L":
            return PathState("link", target=rest)
        if kind in ("D", "F"):
            words = rest.split(" ")
            if len(words) != (3 if kind == "D" else 4) or (kind == "F" and len(words[3]) != 40):
                return UNREAD
            mode = int(words[0], 8)
            return PathState("directory" if kind == "D" else "file", mode, words[1], words[2], words[3] if kind == "F" else None)
    except ValueError:
        return UNREAD
    return UNREAD


def parse(lines: list[str], paths: list[str], users: list[str] = (), groups: list[str] = ()) -> dict:
    """``{path: PathState}`` plus ``{("user", name) | ("group", name): Account}``; a short or garbled output leaves
    the rest UNREAD (so they are converged by their operations, never skipped)."""
    out: dict = {}
    lines = list(lines)
    for i, p in enumerate(paths):
        out[p] = _path_line(lines[i].rstrip("\n")) if i < len(lines) else UNREAD
    rest = lines[len(paths):]
    for i, (letter, key, name) in enumerate([("U", "user", n) for n in users] + [("G", "group", n) for n in groups]):
        line = rest[i].rstrip("\n") if i < len(rest) else ""
        if line.startswith(letter) and not line[1:].strip():  # getent printed nothing: no such entry
            out[(key, name)] = Account(False)
        elif line.startswith(letter + " ") and line[2:].split(":")[0] == name:
            out[(key, name)] = Account(True, tuple(line[2:].split(":")))
        else:
            out[(key, name)] = None  # unread
    return out


def _owned(state: PathState, user: str | None, group: str | None, mode: str | int | None) -> bool:
    if user is not None and state.user != user:
        return False
    if group is not None and state.group != group:
        return False
    if mode is not None and state.mode != (int(str(mode), 8) if not isinstance(mode, int) else mode):
        return False
    return True


def directory_ok(state: PathState, user: str | None = None, group: str | None = None, mode: str | None = None) -> bool:
    """A folder (not a link to one) with this owner and mode: what ``files.directory`` would leave unchanged."""
    return state.kind == "directory" and _owned(state, user, group, mode)


def file_ok(state: PathState, sha1: str | None = None, user: str | None = None, group: str | None = None,
            mode: str | None = None) -> bool:
    """A regular file with this content (SHA-1, when given), owner and mode."""
    return state.kind == "file" and (sha1 is None or state.sha1 == sha1) and _owned(state, user, group, mode)


def link_ok(state: PathState, target: str) -> bool:
    """A symbolic link whose readlink is exactly ``target``: what ``files.link`` compares."""
    return state.kind == "link" and state.target == target


def group_ok(account: Account | None) -> bool:
    return bool(account and account.exists)


def user_ok(account: Account | None, group_entry: Account | None, home: str, shell: str) -> bool:
    """The passwd entry exists with this home and shell and its primary group is the named group's gid."""
    if not (account and account.exists and len(account.fields) >= 7 and group_entry and group_entry.exists
            and len(group_entry.fields) >= 3):
        return False
    return account.fields[5] == home and account.fields[6] == shell and account.fields[3] == group_entry.fields[2]

