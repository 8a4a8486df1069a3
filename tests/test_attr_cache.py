"""latest.qasm keeps its attributes in the kernel for a second (a walk or a cat of every
circuit costs no getattr per file), so every change must drop them: st_size always equals
what a read returns, whichever path made the change, and after a refused write too."""

import errno
import os

import pytest

from tests.conftest import BELL, GHZ3

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
