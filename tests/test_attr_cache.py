"""latest.qasm and control files keep their attributes in the kernel for a second (a walk
or a cat of every circuit costs no getattr per file, a command's open none), so every
change must drop them: st_size always equals what a read returns, whichever path made the
change, and after a refused write too. latest.qasm also keeps its pages."""

import contextlib
import errno
import json
import mmap
import os
import subprocess

import pytest

from tests.conftest import BELL, GHZ3
from tests.test_qubits import command

pytestmark = pytest.mark.fuse

UNKNOWN_GATE = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nnosuchgate q[0];\n'


def _size_and_read(path) -> tuple[int, int]:
    """(st_size, bytes read); the stat last, so the kernel has just cached the attributes."""
    data = path.read_bytes()
    return os.stat(path).st_size, len(data)


@pytest.fixture
def warm(qfs):
    """A mount whose parse worker is started with both importers loaded (OpenQASM 2 and 3):
    each step below then takes milliseconds, well inside the second the kernel keeps
    latest.qasm's attributes (so a missing invalidation fails these tests)."""
    qfs.write_circuit("warmup")
    qfs.write_circuit("warmup", GHZ3)
    return qfs


def test_latest_qasm_size_follows_a_version_added_through_the_alias(warm):
    assert len(BELL) != len(GHZ3)
    latest = warm.write_circuit("bell") / "latest.qasm"
    assert _size_and_read(latest) == (len(BELL), len(BELL))  # now in the kernel's cache
    (warm.circuits / "bell.qasm").write_text(GHZ3)  # version 2 by another name
    assert _size_and_read(latest) == (len(GHZ3), len(GHZ3))
    assert latest.read_text() == GHZ3


def test_latest_qasm_size_is_the_kept_one_after_a_refused_write(warm):
    latest = warm.write_circuit("bell") / "latest.qasm"
    assert _size_and_read(latest) == (len(BELL), len(BELL))
    # O_TRUNC: the kernel's size is 0 while it writes, the written one until the close
    with pytest.raises(OSError) as refused, open(latest, "w") as out:
        out.write(UNKNOWN_GATE)
    assert refused.value.errno == errno.EINVAL
    assert _size_and_read(latest) == (len(BELL), len(BELL))
    assert latest.read_text() == BELL


def test_latest_qasm_size_follows_a_version_restored_from_history(warm):
    bell = warm.write_circuit("bell")
    (bell / "latest.qasm").write_text(GHZ3)
    latest = bell / "latest.qasm"
    assert _size_and_read(latest) == (len(GHZ3), len(GHZ3))
    (bell / "v3.qasm").write_text(BELL)  # a write where there is no v3 restores it
    assert _size_and_read(latest) == (len(BELL), len(BELL))


# latest.qasm also keeps its pages between opens (keep_cache): a cat of every circuit costs
# no read request. Each change moves its mtime (the kernel then drops the pages at the next
# read) and a writer's close drops the pages it wrote, so no stale byte is ever served.


def _same_length_programs() -> tuple[str, str, str]:
    """Two accepted programs and a refused one, all of one length past two pages (the
    kernel keeps fully written pages of a writer)."""
    def padded(body: str) -> str:
        return body + "// " + "x" * (9000 - len(body) - 4) + "\n"
    first, second = padded(BELL), padded(BELL.replace("h q[0];", "x q[0];"))
    refused = padded(UNKNOWN_GATE)
    assert len(first) == len(second) == len(refused) and first != second
    return first, second, refused


def test_a_new_version_of_the_same_length_is_read_at_once(warm):
    first, second, _ = _same_length_programs()
    latest = warm.write_circuit("bell", first) / "latest.qasm"
    assert latest.read_text() == first  # pages cached
    (warm.circuits / "bell.qasm").write_text(second)  # another name: no writer of this inode
    assert latest.read_text() == second
    latest.write_text(first)  # and through latest.qasm itself
    assert latest.read_text() == first


def test_pages_of_a_refused_write_of_the_same_length_are_never_served(warm):
    first, _, refused = _same_length_programs()
    latest = warm.write_circuit("bell", first) / "latest.qasm"
    assert latest.read_text() == first
    with pytest.raises(OSError) as refusal, open(latest, "w") as out:
        out.write(refused)
    assert refusal.value.errno == errno.EINVAL
    assert latest.read_text() == first
    assert os.stat(latest).st_size == len(first)


def test_a_reader_open_across_a_new_version_leaves_no_stale_pages(warm):
    """latest.qasm's pages are the kernel's, shared by every opener: a reader that opened
    it before a new version and reads after it must not fill them with the old version's
    bytes under the new one's size (a later cat read a splice of both, and sed -i
    committed it)."""
    latest = warm.write_circuit("bell", BELL) / "latest.qasm"
    with open(latest, "rb", buffering=0) as held:
        shorter = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\nx q[2];\n'
        assert len(shorter) < len(BELL)
        latest.write_text(shorter)
        held.read()  # the old reader reads after the new version
    assert latest.read_text() == shorter
    assert os.stat(latest).st_size == len(shorter)
    subprocess.run(["sed", "-i", "s/x q/h q/", str(latest)], check=True)
    assert latest.read_text() == shorter.replace("x q", "h q")


def test_bytes_written_over_a_version_and_refused_are_never_served(warm):
    """A version and its views keep their pages for long (immutable): bytes a writer put
    over them, refused at close (EACCES), never reach what later readers get."""
    bell = warm.write_circuit("bell")
    for name in ("v1.qasm", "v1.qasm2", "v1.qpy"):
        before = (bell / name).read_bytes()  # its pages now in the kernel's cache
        with pytest.raises(PermissionError), open(bell / name, "r+b") as out:
            out.write(b"XXXX")
        assert (bell / name).read_bytes() == before, name
        assert os.stat(bell / name).st_size == len(before)
        with open(bell / name, "r+b") as out, \
                mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            assert mapped[:] == before  # a writer's shared map works as on any file


# A control file keeps its attributes for a second too (the next command's open asks for
# none): each command's write() makes the kernel forget the size, a refused one has fsops
# drop it, so a stat right after any command shows the reply's size.


def test_ctl_size_follows_each_reply_at_once(qfs):
    command(qfs.qubits / "ctl", "alloc 2 task=t")
    ctl = qfs.qubits / "tasks" / "t" / "ctl"
    lines = (("set theta=0.5", False), ("bogus", True), ("set phi=1.25", False),
             ("set x", True), ("reset", False))
    kept = os.open(ctl, os.O_WRONLY)  # `exec 3>>ctl`: no truncation at each command
    try:
        for line, refused in lines * 2:
            for write in (lambda line=line: command(ctl, line),
                          lambda line=line: os.write(kept, (line + "\n").encode())):
                os.stat(ctl)  # attributes cached
                try:
                    write()
                except OSError:
                    assert refused, line
                else:
                    assert not refused, line
                size = os.stat(ctl).st_size  # first: a read that ends early fixes the size
                assert size == len(ctl.read_bytes()), (line, ctl.read_text())
                assert ctl.read_text().startswith("error:" if refused else "ok:")
    finally:
        os.close(kept)


def test_the_descriptor_that_wrote_a_command_reads_its_reply(qfs):
    """`exec 3<>ctl`: a read on the descriptor that wrote a command gives that command's
    reply, good or refused, and fstat the same size."""
    command(qfs.qubits / "ctl", "alloc 2 task=t")
    ctl = qfs.qubits / "tasks" / "t" / "ctl"
    command(ctl, "reset")
    with open(ctl, "r+b", buffering=0) as f:
        for line, reply in ((b"set zz=7", b"ok: set zz=7.0\n"), (b"bogus", b"error: EINVAL")):
            with contextlib.suppress(OSError):  # the refused one: its errno is tested elsewhere
                f.write(line)
            f.seek(0)
            got = f.read()
            assert got.startswith(reply), got
            assert os.fstat(f.fileno()).st_size == len(got)


def test_a_circuit_directory_shows_each_change_at_once(warm):
    """The kernel keeps a circuit's directory for 60 s (vfs.KEPT_TIMEOUT), and its results/
    and similar/ a second: their mtime must still move with every version, whoever adds
    it."""
    bell = warm.write_circuit("bell")
    parts = (bell, bell / "results", bell / "similar")
    seen = [os.stat(part).st_mtime_ns for part in parts]  # cached now
    for write in (lambda: (bell / "latest.qasm").write_text(GHZ3),
                  lambda: (warm.circuits / "bell.qasm").write_text(BELL)):
        write()
        now = [os.stat(part).st_mtime_ns for part in parts]
        assert all(after > before for after, before in zip(now, seen, strict=True))
        seen = now


def test_meta_json_shows_each_change_to_the_circuit_at_once(warm):
    """meta.json keeps its attributes a second too (a walk's stat, open and read of it ask
    for none): a change made through an extended attribute, through meta.json or by a new
    version shows in its size, bytes and mtime at once."""
    bell = warm.write_circuit("bell")
    meta = bell / "meta.json"
    before = os.stat(meta)  # cached now
    for change, check in (
        (lambda: os.setxattr(bell, "user.qfs.tags", b"one, two, three"),
         lambda doc: doc["tags"] == ["one", "two", "three"]),
        (lambda: meta.write_text(json.dumps({"description": "a Bell pair, " * 5})),
         lambda doc: doc["description"] == "a Bell pair, " * 5 and doc["tags"] == []),
        (lambda: os.setxattr(bell, "user.qfs.author", b"someone with a long name"),
         lambda doc: doc["author"] == "someone with a long name"),
        (lambda: (bell / "latest.qasm").write_text(GHZ3), lambda doc: True),
    ):
        change()
        after = os.stat(meta)
        data = meta.read_bytes()
        assert after.st_size == len(data) == os.stat(meta).st_size
        assert check(json.loads(data)), data
        assert after.st_mtime_ns > before.st_mtime_ns
        before = after


def test_a_file_being_written_shows_each_change_to_another_process_at_once(qfs):
    """Files being written (a cp's import, an editor's temporary) keep their attributes a
    second too (cp's fstat after create asks for none): each write, truncate and chmod
    still shows in a stat by path at once, and after the close the imported circuit's."""
    for name in ("bell.qasm", ".bell.qasm.swp"):
        path = qfs.circuits / name
        with open(path, "wb", buffering=0) as out:
            assert os.fstat(out.fileno()).st_size == 0
            out.write(b"x" * 10)
            assert os.stat(path).st_size == 10
            out.write(b"y" * 20)
            assert os.stat(path).st_size == 30
            os.chmod(path, 0o600)
            assert os.stat(path).st_mode & 0o777 == 0o600
            out.truncate(0)
            assert os.stat(path).st_size == 0
            out.seek(0)
            out.write(BELL.encode())
            assert os.stat(path).st_size == len(BELL)
        assert _size_and_read(path) == (len(BELL), len(BELL))
    assert (qfs.circuits / "bell" / "latest.qasm").read_text() == BELL


def test_the_import_alias_shows_each_version_at_once(warm):
    """/circuits/<name>.qasm keeps its attributes a second (cp's stat after its close asks
    for none): a version written through latest.qasm drops them, also for a descriptor
    held open on the alias (fstat), as a change to any file shows in fstat."""
    alias = warm.circuits / "bell.qasm"
    alias.write_text(BELL)
    with open(alias, "rb") as held:
        assert os.fstat(held.fileno()).st_size == os.stat(alias).st_size == len(BELL)
        (warm.circuits / "bell" / "latest.qasm").write_text(GHZ3)
        assert os.fstat(held.fileno()).st_size == len(GHZ3)
    assert _size_and_read(alias) == (len(GHZ3), len(GHZ3))
