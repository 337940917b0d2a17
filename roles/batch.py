"""A role's files, folders, links and accounts, checked on the host in one command; only what differs becomes a
pyinfra operation. What makes a no-op deploy cheap.

pyinfra's own operations ask the host one question per SSH command when they run (``files.put``: the file, its
folder, its SHA-1), ~50 ms each: 65 commands for a host that changes nothing. A role declares what it converges on
a ``Batch``, in order, then ``apply()``: one ``PathStates`` fact reads every path and account, and each item that is
already what it should be (same type, owner, mode, content SHA-1 or link target; the same checks pyinfra's
operation makes) is left out; the rest are the usual ``files.*`` / ``server.*`` operations, which check again at
execute time. Arbitrary operations keep their place between them with ``then()``.

Example::

    b = Batch()
    b.directory(name="Tools folder", path="/opt/mf/bin", user="root", group="root", mode="755")
    gate = b.put(name="Readiness gate", src="mineru_fleet/onhost/ready.py", dest="/opt/mf/bin/ready", mode="755")
    b.then(lambda: server.shell(name="Install", commands=["..."]))
    b.apply()
    gate.did_change()        # False when it was already there (no operation), else the operation's answer

Only safe when nothing earlier in the same run changes these paths (each role's batch is read when the role is
prepared, before any operation runs): a role keeps a path that an earlier operation of the run may change out of
its batch.
"""

from __future__ import annotations

from typing import Callable

from pyinfra import host
from pyinfra.api.util import get_file_sha1
from pyinfra.operations import files, server

from mineru_fleet.controller.facts import PathStates
from mineru_fleet.core import pathstate


class Item:
    """One declared operation: ``did_change()`` is False when it was skipped, else what its operation says."""

    def __init__(self, emit: Callable, ok: Callable[[dict], bool] | None, paths=(), users=(), groups=()):
        self._emit, self._ok = emit, ok
        self.paths, self.users, self.groups = tuple(paths), tuple(users), tuple(groups)
        self.meta = None

    def did_change(self) -> bool:
        return bool(self.meta is not None and self.meta.did_change())


class Batch:
    def __init__(self):
        self.items: list[Item] = []

    def _add(self, item: Item) -> Item:
        self.items.append(item)
        return item

    def directory(self, name: str, path: str, user: str, group: str, mode: str) -> Item:
        return self._add(Item(lambda: files.directory(name=name, path=path, user=user, group=group, mode=mode),
                              lambda s: pathstate.directory_ok(s[path], user, group, mode), paths=[path]))

    def put(self, name: str, src, dest: str, mode: str, user: str | None = None, group: str | None = None) -> Item:
        sha1 = get_file_sha1(src)  # what files.put compares (cached by path: the put, if any, does not hash again)
        return self._add(Item(lambda: files.put(name=name, src=src, dest=dest, mode=mode, user=user, group=group),
                              lambda s: pathstate.file_ok(s[dest], sha1, user, group, mode), paths=[dest]))

    def file(self, name: str, path: str, user: str, group: str, mode: str) -> Item:
        """A file that exists (created empty when missing, never touched): ``files.file(present=True, touch=False)``."""
        return self._add(Item(lambda: files.file(name=name, path=path, present=True, touch=False, user=user, group=group, mode=mode),
                              lambda s: pathstate.file_ok(s[path], None, user, group, mode), paths=[path]))

    def link(self, name: str, path: str, target: str) -> Item:
        """``files.link(force=True)``: replaced when it is not a link to exactly ``target``."""
        return self._add(Item(lambda: files.link(name=name, path=path, target=target, force=True, force_backup=False),
                              lambda s: pathstate.link_ok(s[path], target), paths=[path]))

    def group(self, name: str, group: str, system: bool = True) -> Item:
        return self._add(Item(lambda: server.group(name=name, group=group, system=system),
                              lambda s: pathstate.group_ok(s[("group", group)]), groups=[group]))

    def user(self, name: str, user: str, group: str, home: str, shell: str, system: bool = True) -> Item:
        """A user with this primary group, home and shell (no home created): ``server.user``'s own checks."""
        return self._add(Item(
            lambda: server.user(name=name, user=user, group=group, system=system, shell=shell, home=home,
                                create_home=False, ensure_home=False),
            lambda s: pathstate.user_ok(s[("user", user)], s[("group", group)], home, shell), users=[user], groups=[group]))

    def then(self, emit: Callable) -> Item:
        """Any operation, kept in its place (never skipped)."""
        return self._add(Item(emit, None))

    def apply(self) -> None:
        paths = list(dict.fromkeys(p for i in self.items for p in i.paths))
        users = list(dict.fromkeys(u for i in self.items for u in i.users))
        groups = list(dict.fromkeys(g for i in self.items for g in i.groups))
        states = {}
        if paths or users or groups:
            lines = host.get_fact(PathStates, paths=tuple(paths), users=tuple(users), groups=tuple(groups)) or []
            states = pathstate.parse(lines, paths, users, groups)
        for item in self.items:
            if item._ok is not None and states and item._ok(states):
                continue
            item.meta = item._emit()
