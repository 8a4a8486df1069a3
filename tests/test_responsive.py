"""Slow work must not freeze the mount: listing stays quick while a big circuit is parsed."""

import os
import threading
import time

import pytest

from tests.conftest import BELL

pytestmark = pytest.mark.fuse

# Arithmetic angles send this program to Qiskit's reference OpenQASM 3 importer, which takes
# seconds on 6,000 gates: long enough to see whether other requests wait for it.
SLOW = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[8] q;\n" + "".join(
    f"rz({i}*0.001) q[{i % 8}];\ncx q[{i % 8}], q[{(i + 1) % 8}];\n" for i in range(3000)
)


def test_listing_stays_responsive_while_parsing(qfs):
    for i in range(50):
        qfs.write_circuit(f"small{i}")
    big = qfs.circuits / "big"
    big.mkdir()
    finished = threading.Event()

    def write_big():
        (big / "latest.qasm").write_text(SLOW)
        finished.set()

    writer = threading.Thread(target=write_big)
    started = time.monotonic()
    writer.start()
    slowest = 0.0
    rounds = 0
    while not finished.is_set():
        t0 = time.perf_counter()
        names = [p.name for p in qfs.circuits.iterdir()]
        (qfs.circuits / "small7" / "v1.qasm").read_text()
        slowest = max(slowest, time.perf_counter() - t0)
        rounds += 1
        assert "small49" in names
    writer.join()
    parse_seconds = time.monotonic() - started
    assert "v1.qasm" in os.listdir(big)  # a circuit made by mkdir shows its versions once listed
    assert (big / "v1.qasm").read_text() == SLOW
    assert parse_seconds > 0.5, "the slow program was not slow: the test proves nothing"
    assert rounds >= 5
    assert slowest < 0.25, f"a listing took {slowest:.3f} s while a {parse_seconds:.1f} s parse ran"
    assert (qfs.circuits / "small0" / "latest.qasm").read_text() == BELL
