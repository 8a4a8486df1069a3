"""Fixtures that mount qfs for real: the daemon in a background process, a temp mountpoint,
lazy unmount in teardown even when the test failed, a failure if the daemon logged a
traceback (an EIO from a bug must not pass unnoticed), and after every mount test the
offline consistency check (`qfsmount --check`) of its data directory, which must find
nothing (as s3ql runs fsck after each test). A test that damages its data on purpose says
so with `@pytest.mark.damages_data`."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qfsmount.cli import main as qfsmount_main

QFSMOUNT = [sys.executable, "-m", "qfsmount.cli"]
BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
"""
GHZ3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[3] c;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
c = measure q;
"""


def fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config, items):
    if fuse_usable():
        return
    if os.environ.get("QFS_REQUIRE_FUSE") == "1":
        raise pytest.UsageError("QFS_REQUIRE_FUSE=1 but FUSE is unusable: mount tests would skip")
    skip = pytest.mark.skip(reason="no /dev/fuse or fusermount3 here (.ci/run refuses to skip)")
    for item in items:
        if "fuse" in item.keywords:
            item.add_marker(skip)


class Mount:
    """A running qfs daemon and its mountpoint."""

    def __init__(self, root: Path, data: Path, extra: list[str]) -> None:
        self.root = root
        self.data = data
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log = data.parent / f"{data.name}-daemon.log"

    @property
    def circuits(self) -> Path:
        return self.root / "circuits"

    @property
    def qubits(self) -> Path:
        return self.root / "qubits"

    def start(self) -> "Mount":
        self.root.mkdir(exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*QFSMOUNT, str(self.root), "--data", str(self.data), "-f", *self.extra],
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.root):
            if self.proc.poll() is not None:
                raise RuntimeError(f"qfsmount exited: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("qfsmount did not mount within 60 s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.root)], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self.proc = None

    def check_options(self) -> list[str]:
        """The options of this mount that the offline check must use too."""
        kept = []
        for i, arg in enumerate(self.extra):
            if arg in ("--config", "--profile", "--key-file") and i + 1 < len(self.extra):
                kept += [arg, self.extra[i + 1]]
        return kept

    def daemon_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def write_circuit(self, name: str, source: str = BELL) -> Path:
        target = self.circuits / f"{name}.qasm"
        target.write_text(source)
        return self.circuits / name


@pytest.fixture
def mount_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    mounts: list[Mount] = []

    def make(data: Path | None = None, extra: list[str] | None = None,
             base: Path | None = None) -> Mount:
        index = len(mounts)
        root = (base or tmp_path) / f"mnt{index}"
        m = Mount(root, data or tmp_path / "data", extra or [])
        mounts.append(m)
        return m.start()

    yield make
    for m in mounts:
        with contextlib.suppress(Exception):
            m.stop()
    for m in mounts:
        text = m.daemon_log()
        assert "Traceback" not in text, f"daemon logged a traceback:\n{text}"
    if request.node.get_closest_marker("damages_data") is None:
        for data, options in {m.data: m.check_options() for m in mounts}.items():
            assert_consistent(data, options)


def assert_consistent(data: Path, options: list[str]) -> None:
    """`qfsmount --check` of a data directory finds no problem (run in this process: the
    same code as the command, without an interpreter start per test)."""
    if not (data / "meta.lmdb").exists():
        return
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = qfsmount_main(["--check", "--data", str(data), *options])
    assert status == 0, f"qfsmount --check found problems:\n{out.getvalue()}"


@pytest.fixture
def qfs(mount_factory) -> Mount:
    return mount_factory()
