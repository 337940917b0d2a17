"""The one-command host read behind roles/batch.py: its script run by a real sh on real files, and the checks
that decide whether an operation can be left out (any difference must keep it)."""

from __future__ import annotations

import grp
import hashlib
import io
import os
import pwd
import subprocess

import pytest

from mineru_fleet.core import pathstate
from mineru_fleet.core.pathstate import MISSING, Account, PathState
from pyinfra.api.util import get_file_sha1

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def read(paths, users=(), groups=()):
    out = subprocess.run(["sh", "-c", pathstate.script(paths, list(users), list(groups))], capture_output=True, text=True, check=True)
    return pathstate.parse(out.stdout.splitlines(), paths, list(users), list(groups))


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "d").mkdir(mode=0o750)
    os.chmod(tmp_path / "d", 0o750)
    f = tmp_path / "d" / "a file with spaces.txt"
    f.write_text("hello\n")
    os.chmod(f, 0o644)
    (tmp_path / "current").symlink_to("releases/cpu-1")
    return tmp_path


def test_the_script_reads_folders_files_links_and_missing_paths(tree):
    f = str(tree / "d" / "a file with spaces.txt")
    s = read([str(tree / "d"), f, str(tree / "current"), str(tree / "nothing")])
    assert s[str(tree / "d")] == PathState("directory", 0o750, ME, MY_GROUP)
    assert s[f] == PathState("file", 0o644, ME, MY_GROUP, hashlib.sha1(b"hello\n").hexdigest())
    assert s[str(tree / "current")] == PathState("link", target="releases/cpu-1")
    assert s[str(tree / "nothing")] == MISSING


def test_a_converged_item_is_recognised_and_every_difference_keeps_the_operation(tree):
    f = str(tree / "d" / "a file with spaces.txt")
    good = get_file_sha1(io.StringIO("hello\n"))
    st = read([f])[f]
    assert pathstate.file_ok(st, good, ME, MY_GROUP, "644")
    assert not pathstate.file_ok(st, get_file_sha1(io.StringIO("hello")), ME, MY_GROUP, "644")   # content
    assert not pathstate.file_ok(st, good, ME, MY_GROUP, "600")                              # mode
    assert not pathstate.file_ok(st, good, "nobody-else", MY_GROUP, "644")                   # owner
    assert not pathstate.file_ok(st, good, ME, "nogroup-else", "644")                        # group
    os.chmod(f, 0o600)
    assert not pathstate.file_ok(read([f])[f], good, ME, MY_GROUP, "644")                   # changed on disk
    (tree / "d" / "a file with spaces.txt").write_text("hellO\n")
    assert not pathstate.file_ok(read([f])[f], good, None, None, None)
    d = str(tree / "d")
    assert pathstate.directory_ok(read([d])[d], ME, MY_GROUP, "750")
    assert not pathstate.directory_ok(read([d])[d], ME, MY_GROUP, "755")
    assert not pathstate.directory_ok(read([f])[f], ME, MY_GROUP, "600")                    # a file is not a folder
    link = str(tree / "current")
    assert pathstate.link_ok(read([link])[link], "releases/cpu-1")
    assert not pathstate.link_ok(read([link])[link], "releases/cpu-2")
    assert not pathstate.file_ok(read([link])[link])                                        # a link is not a file


def test_a_link_to_a_folder_is_not_the_folder(tree):
    (tree / "to-d").symlink_to(tree / "d")
    p = str(tree / "to-d")
    assert not pathstate.directory_ok(read([p])[p], ME, MY_GROUP, "750")


def test_accounts_from_getent():
    s = read([], users=["root", "no-such-user-mf"], groups=["root", "no-such-group-mf"])
    assert s[("user", "root")].exists and s[("user", "root")].fields[0] == "root"
    assert s[("user", "no-such-user-mf")] == Account(False)
    assert pathstate.group_ok(s[("group", "root")]) and not pathstate.group_ok(s[("group", "no-such-group-mf")])
    root = s[("user", "root")]
    assert pathstate.user_ok(root, s[("group", "root")], root.fields[5], root.fields[6])
    assert not pathstate.user_ok(root, s[("group", "root")], "/elsewhere", root.fields[6])
    assert not pathstate.user_ok(root, s[("group", "root")], root.fields[5], "/bin/false-not")


@pytest.mark.parametrize("lines", [[], ["D 755 root"], ["F 644 root root nothex"], ["X"], ["D abc root root"]])
def test_short_or_garbled_output_never_counts_as_converged(lines):
    s = pathstate.parse(lines, ["/p"], users=["mineru"], groups=["mineru"])
    assert not pathstate.directory_ok(s["/p"]) and not pathstate.file_ok(s["/p"])
    assert not pathstate.user_ok(s[("user", "mineru")], s[("group", "mineru")], "/h", "/bin/sh")
    assert not pathstate.group_ok(s[("group", "mineru")])


def test_an_entry_for_another_name_is_not_the_account():
    s = pathstate.parse(["U other:x:1:1::/h:/bin/sh"], [], users=["mineru"])
    assert not pathstate.user_ok(s[("user", "mineru")], Account(True, ("mineru", "x", "1")), "/h", "/bin/sh")


def test_the_scripts_sha1_is_the_one_files_put_compares(tmp_path):
    """Batch.put compares pyinfra's get_file_sha1 of the source with the script's sha1sum on the host: equal for the
    same bytes (a large binary, and a StringIO of non-ASCII text as files.put sends it)."""
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(3 << 20))
    assert read([str(f)])[str(f)].sha1 == get_file_sha1(str(f))
    t = tmp_path / "unit.txt"
    t.write_bytes("unit ☃\n".encode())
    assert read([str(t)])[str(t)].sha1 == get_file_sha1(io.StringIO("unit ☃\n"))
