"""Memory a user can make the daemon hold is bounded: readers share one buffer per version,
a write past what a file may hold is EFBIG at write(), and a user's files being written
together hold at most performance.max_buffered_mb_per_user (ENOSPC past it)."""

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import BELL
from tests.test_hostile import vm_rss_kb

pytestmark = pytest.mark.fuse

OPENER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
path, count = sys.argv[1], int(sys.argv[2])
files = [open(path, "rb") for _ in range(count)]
sizes = {len(f.read(1 << 21)) for f in files[:10]}
print(json.dumps({"opened": len(files), "sizes": sorted(sizes)}))
sys.stdout.flush()
sys.stdin.read()  # hold every file open until the test has measured
"""


def write_all(fd: int, data: bytes) -> None:
    """As a buffered writer does: retry what a short write() left."""
    while data:
        data = data[os.write(fd, data):]


def test_three_thousand_readers_share_one_buffer(mount_factory):
    base = Path(tempfile.mkdtemp(prefix="qfs-budget-"))
    base.chmod(0o755)
    qfs = mount_factory(base=base)
    big = BELL + ("// " + "x" * 97 + "\n") * 10_000  # about 1 MB of comments
    (qfs.circuits / "big.qasm").write_text(big)
    before = vm_rss_kb(qfs.proc.pid)
    opener = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         OPENER, str(qfs.circuits / "big" / "latest.qasm"), "3000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(opener.stdout.readline())
        assert report == {"opened": 3000, "sizes": [len(big)]}
        assert vm_rss_kb(qfs.proc.pid) < before + 200_000  # 3,000 copies would be 3 GB
    finally:
        opener.communicate("", timeout=60)


def test_a_write_past_what_a_file_may_hold_is_efbig_at_write(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_program_bytes: 65536\n")
    qfs = mount_factory(extra=["--config", str(config)])
    fd = os.open(qfs.circuits / "huge.qasm", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_all(fd, b"// " + b"x" * 60_000 + b"\n")
        with pytest.raises(OSError) as refused:
            write_all(fd, b"y" * 10_000)  # the kernel may take a first page of it
        assert refused.value.errno == errno.EFBIG
    finally:
        with pytest.raises(OSError):
            os.close(fd)  # only a comment: not a program
    qfs.write_circuit("bell")
    with pytest.raises(OSError) as refused:
        os.truncate(qfs.circuits / "bell" / "latest.qasm", 100 << 30)
    assert refused.value.errno == errno.EFBIG
    assert "may hold at most 65536 bytes (circuit_fs.max_program_bytes)" in \
        (qfs.root / ".qfs" / "log").read_text()
    assert (qfs.circuits / "bell" / "latest.qasm").read_text() == BELL
    assert os.listdir(qfs.circuits) == ["bell"]


def test_a_users_files_being_written_share_one_budget(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("performance:\n  max_buffered_mb_per_user: 16\n")
    qfs = mount_factory(extra=["--config", str(config)])
    chunk = b"x" * (4 << 20)
    fds = [os.open(qfs.circuits / f"a{i}.qasm", os.O_WRONLY | os.O_CREAT, 0o644)
           for i in range(5)]
    try:
        for fd in fds[:4]:
            write_all(fd, chunk)  # 4 x 4 MiB: the whole budget, each within its file's cap
        with pytest.raises(OSError) as refused:
            write_all(fds[4], b"y" * (1 << 20))
        assert refused.value.errno == errno.ENOSPC
        assert "performance.max_buffered_mb_per_user" in (qfs.root / ".qfs" / "log").read_text()
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):  # not programs: refused at close
                os.close(fd)
    fd = os.open(qfs.circuits / "after.qasm", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, BELL.encode())  # the budget came back when those files closed
    os.close(fd)
    # a0..a3 held no program (refused at close); a4's refused write changed nothing
    assert os.listdir(qfs.circuits) == ["after"]
