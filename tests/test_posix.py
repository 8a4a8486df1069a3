"""POSIX behaviour users rely on: names, errors, big directories, statfs, find, grep, rsync."""

import errno
import os
import subprocess

import pytest
import trio

from levels.config import load_config
from levels.fabric import Fabric
from tests.conftest import BELL, GHZ3

pytestmark = pytest.mark.fuse


def _errno_of(call, *args):
    with pytest.raises(OSError) as caught:
        call(*args)
    return caught.value.errno


def test_name_errors(qfs):
    circuits = qfs.circuits
    (circuits / "taken").mkdir()
    assert _errno_of(os.mkdir, circuits / "taken") == errno.EEXIST
    assert _errno_of(os.mkdir, circuits / "-dash") == errno.EINVAL
    assert _errno_of(os.mkdir, circuits / "sp ace") == errno.EINVAL
    assert _errno_of(os.mkdir, circuits / ("x" * 201)) == errno.ENAMETOOLONG
    assert _errno_of(os.mkdir, circuits / ("x" * 256)) == errno.ENAMETOOLONG
    assert _errno_of(os.mkdir, qfs.root / "search" / "x" / "y") in (errno.EACCES, errno.ENOENT)
    assert _errno_of(os.mkdir, circuits / "taken" / "sub") == errno.EACCES
    assert _errno_of(os.mkdir, qfs.root / "elsewhere") == errno.EACCES
    assert _errno_of(os.rmdir, circuits / "absent") == errno.ENOENT
    assert _errno_of(os.open, circuits / "taken" / "v9.qasm", os.O_RDONLY) == errno.ENOENT
    qfs.write_circuit("other")
    assert _errno_of(os.rename, circuits / "taken", circuits / "other") == errno.EEXIST
    # A name that ends as an import does would stand where `cp x.qasm /circuits/` writes.
    for name in ("x.qasm", "x.quil", "x.cirq.json"):
        assert _errno_of(os.mkdir, circuits / name) == errno.EINVAL
        assert _errno_of(os.rename, circuits / "taken", circuits / name) == errno.EINVAL
    assert sorted(os.listdir(circuits)) == ["other", "taken"]
    assert "use letters" in (qfs.root / ".qfs" / "log").read_text()


def test_names_that_are_not_utf8_name_nothing_and_are_never_made(qfs):
    """The tree's names are UTF-8: other bytes are ENOENT to look up and EINVAL to make,
    anywhere, and the daemon keeps serving (a lookup of one once ended the mount)."""
    bell = qfs.write_circuit("bell")
    root = os.fsencode(qfs.root)
    bad = b"\xffbad"
    for where in (b"/circuits/", b"/circuits/bell/", b"/circuits/bell/results/", b"/search/",
                  b"/states/", b"/qubits/"):
        assert _errno_of(os.stat, root + where + bad) == errno.ENOENT
    assert _errno_of(os.stat, root + b"/search/qubits:" + bad) == errno.ENOENT
    assert _errno_of(os.open, root + b"/circuits/" + bad + b".qasm",
                     os.O_WRONLY | os.O_CREAT) == errno.EINVAL
    assert _errno_of(os.open, root + b"/circuits/bell/results/r" + bad + b".json",
                     os.O_WRONLY | os.O_CREAT) == errno.EINVAL
    assert _errno_of(os.mkdir, root + b"/circuits/" + bad) == errno.EINVAL
    assert _errno_of(os.mkdir, root + b"/states/" + bad) == errno.EINVAL
    assert _errno_of(os.symlink, b"x", root + b"/circuits/bell/similar/" + bad) == errno.EINVAL
    assert _errno_of(os.rename, bell, root + b"/circuits/" + bad) == errno.EINVAL
    assert os.listdir(qfs.circuits) == ["bell"]
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "mkdir /circuits: b'\\xffbad' is not UTF-8: names here are UTF-8 text" in log
    assert "b'r\\xffbad.json' is not UTF-8" in (bell / "errors").read_text()
    assert (bell / "latest.qasm").read_text() == BELL


def test_attributes(qfs):
    bell = qfs.write_circuit("bell")
    st = os.stat(bell)
    assert st.st_uid == os.getuid() and st.st_gid == os.getgid()
    assert oct(st.st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(bell / "v1.qasm").st_mode & 0o777) == oct(0o444)
    assert oct(os.stat(bell / "latest.qasm").st_mode & 0o777) == oct(0o644)
    before = os.stat(bell / "v1.qasm").st_mtime_ns
    (bell / "latest.qasm").write_text(GHZ3)
    assert os.stat(bell / "v2.qasm").st_mtime_ns >= before
    assert os.stat(bell / "latest.qasm").st_size == len(GHZ3)
    assert os.stat(bell).st_mtime_ns >= before


def test_statfs(qfs):
    vfs = os.statvfs(qfs.root)
    assert vfs.f_bsize > 0 and vfs.f_blocks > 0 and vfs.f_namemax == 255


def test_ten_thousand_circuits_list(mount_factory, tmp_path):
    data = tmp_path / "data"
    fabric = Fabric(data, load_config())
    prepared = trio.run(fabric.circuits.prepare_version, BELL.encode())
    names = [f"c{i:05d}" for i in range(10_050)]
    fabric.circuits.commit_many(names, prepared)
    fabric.close()
    qfs = mount_factory(data=data)
    assert sorted(os.listdir(qfs.circuits)) == names
    # Small getdents buffers make the kernel come back with offsets many times.
    listed = subprocess.run(["ls", "-1U", str(qfs.circuits)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == names
    assert os.listdir(qfs.root / "search" / "c10049") == ["c10049"]


def test_find_and_grep(qfs):
    qfs.write_circuit("bell")
    qfs.write_circuit("ghz", GHZ3)
    found = subprocess.run(["find", str(qfs.circuits), "-name", "v1.qasm"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(found) == [str(qfs.circuits / "bell" / "v1.qasm"),
                             str(qfs.circuits / "ghz" / "v1.qasm")]
    grep = subprocess.run(["grep", "-rl", "--include=*.qasm", "stdgates", str(qfs.circuits)],
                          capture_output=True, text=True)
    assert grep.returncode == 0
    assert sorted(grep.stdout.split()) == [str(qfs.circuits / "ghz" / n)
                                           for n in ("latest.qasm", "v1.qasm")]


def test_rsync_into_and_out_of_the_mount(qfs, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "bell.qasm").write_text(BELL)
    (source / "ghz.qasm").write_text(GHZ3)
    done = subprocess.run(["rsync", "-a", f"{source}/", f"{qfs.circuits}/"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(qfs.circuits)) == ["bell", "ghz"]
    assert (qfs.circuits / "ghz" / "v1.qasm").read_text() == GHZ3
    # An edited file synced again becomes a new version of that circuit.
    (source / "ghz.qasm").write_text(GHZ3 + "// edited\n")
    done = subprocess.run(["rsync", "-a", f"{source}/", f"{qfs.circuits}/"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert (qfs.circuits / "ghz" / "v2.qasm").read_text() == GHZ3 + "// edited\n"
    # rsync into a circuit directory: the temp file + rename onto latest.qasm.
    edited = tmp_path / "latest.qasm"
    edited.write_text(BELL + "// via rsync\n")
    done = subprocess.run(["rsync", "-a", str(edited), f"{qfs.circuits}/bell/latest.qasm"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (qfs.circuits / "bell" / "v2.qasm").read_text() == BELL + "// via rsync\n"
    # And out of the mount: a full, faithful copy.
    backup = tmp_path / "backup"
    done = subprocess.run(["rsync", "-a", f"{qfs.circuits}/", f"{backup}/"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert (backup / "ghz" / "v2.qasm").read_text() == GHZ3 + "// edited\n"
    assert (backup / "bell" / "v1.txt").read_bytes() == (qfs.circuits / "bell" / "v1.txt"
                                                          ).read_bytes()


def test_links_special_files_and_attributes_refused_say_why(qfs):
    """A hard link and a fifo are EPERM with their reason in /.qfs/log (they were refused
    unlogged, the fifo ENOSYS), and a refused setxattr names its file, so that a
    circuit's `errors` shows it."""
    bell = qfs.write_circuit("bell")
    assert _errno_of(os.link, bell / "v1.qasm", bell / "copy.qasm") == errno.EPERM
    assert _errno_of(os.mkfifo, qfs.circuits / "pipe") == errno.EPERM
    assert _errno_of(os.setxattr, bell, "user.qfs.created", b"2001-01-01T00:00:00Z") \
        == errno.EACCES
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "link /circuits/bell/copy.qasm: hard links are not kept" in log
    assert "mknod /circuits/pipe: special files" in log
    assert "setxattr /circuits/bell: " in log
    assert "setxattr /circuits/bell: " in (bell / "errors").read_text()
