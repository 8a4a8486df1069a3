"""Fuzzing through the mount: random and mutated OpenQASM, JSON, YAML and control lines,
written as root and as an unprivileged user. Every reply must be success or an errno from
the documented set (never EIO, never a dead mount), and the daemon's memory stays bounded."""

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BELL, GHZ3
from tests.test_hostile import vm_rss_kb, write

pytestmark = pytest.mark.fuse

ALLOWED = {0, errno.EINVAL, errno.ENOENT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EBUSY,
           errno.ENOSPC, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
           errno.ENOTEMPTY}
RSS_BOUND_KB = 1_500_000
QASM_WORDS = [b"OPENQASM 2.0;", b"OPENQASM 3.0;", b'include "qelib1.inc";', b"qreg q[3];",
              b"qubit[3] q;", b"bit[3] c;", b"creg c[3];", b"h q[0];", b"cx q[0],q[1];",
              b"measure q -> c;", b"c = measure q;", b"if (c == 1) x q[0];", b"gate g a { h a; }",
              b"rz(pi/2) q[1];", b"((((", b"))))", b"{", b"}", b"[", b"]", b"for", b"while",
              b"$3", b"\x00", b"\xff", b"1e999", b"-0", b"inf", b"\n", b";"]
CTL_WORDS = ["alloc", "release", "run", "apply", "measure", "reset", "set", "on", "do", "off",
             "checkpoint", "restore", "migrate", "task=f", "shots=", "seed=", "prio=", "q0",
             "q1", "x", "h", "bell", "@v1", "=", "1", "0", "-1", "1e400", "nan", "²", ";",
             "format=shadow", "device=nowhere", "threshold=2"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid program with a splice of random bytes or QASM words."""
    seed = draw(st.sampled_from([BELL, GHZ3])).encode()
    position = draw(st.integers(0, len(seed)))
    insert = draw(st.binary(max_size=40) | st.sampled_from(QASM_WORDS))
    cut = draw(st.integers(0, 30))
    return seed[:position] + insert + seed[position + cut:]


def payloads() -> st.SearchStrategy:
    qasm = st.one_of(
        st.binary(max_size=600),
        st.lists(st.sampled_from(QASM_WORDS), max_size=30).map(b" ".join),
        mutated())
    jsons = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                         max_leaves=20).map(lambda v: json.dumps(v).encode())
    stage = st.dictionaries(
        st.sampled_from(["circuit", "shots", "delay", "qubits", "format", "checkpoint"]),
        st.integers(-5, 10**9) | st.text(max_size=10) | st.floats())
    workflow = st.dictionaries(
        st.sampled_from(["qubits", "topology", "stages", "name", "x"]),
        st.integers(-5, 10**6) | st.text(max_size=10) | st.lists(stage, max_size=3),
        max_size=4)
    yamls = st.binary(max_size=300) | workflow.map(lambda d: json.dumps(d).encode())
    ctl = st.lists(st.sampled_from(CTL_WORDS), max_size=8).map(lambda w: " ".join(w).encode())
    return st.one_of(st.tuples(st.just("qasm"), qasm), st.tuples(st.just("meta"), jsons),
                     st.tuples(st.just("yaml"), yamls), st.tuples(st.just("ctl"), ctl))


def target(qfs, kind: str) -> Path:
    return {
        "qasm": qfs.circuits / "fz.qasm",
        "meta": qfs.circuits / "bell" / "meta.json",
        "yaml": qfs.root / "workflows" / "fz.yaml",
        "ctl": qfs.qubits / "tasks" / "f" / "ctl",
    }[kind]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """One mount for every example (a mount per example would cost seconds each)."""
    from tests.conftest import Mount, assert_consistent

    base = Path(tempfile.mkdtemp(prefix="qfs-fuzz-"))
    base.chmod(0o755)
    qfs = Mount(base / "mnt", base / "data", []).start()
    try:
        (qfs.circuits / "bell.qasm").write_text(BELL)
        with open(qfs.qubits / "ctl", "w") as f:
            f.write("alloc 3 task=f\n")
        yield qfs
    finally:
        qfs.stop()
        assert "Traceback" not in qfs.daemon_log()
        assert_consistent(qfs.data, [])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads())
def test_fuzzed_writes_as_root_get_an_errno_never_a_crash(fuzzed, payload):
    kind, data = payload
    code = write(target(fuzzed, kind), data)
    assert code in ALLOWED, (kind, data, errno.errorcode.get(code, code))
    assert fuzzed.proc.poll() is None
    assert vm_rss_kb(fuzzed.proc.pid) < RSS_BOUND_KB
    assert (fuzzed.circuits / "bell" / "v1.qasm").read_text() == BELL


WRITER = """
import json, sys
results = []
for path, hexdata in json.loads(sys.stdin.read()):
    try:
        with open(path, "wb") as f:
            f.write(bytes.fromhex(hexdata))
        results.append(0)
    except OSError as exc:
        results.append(exc.errno)
print(json.dumps(results))
"""


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(payloads(), min_size=10, max_size=10))
def test_fuzzed_writes_as_nobody_get_an_errno_never_a_crash(fuzzed, batch):
    jobs = [(str(target(fuzzed, kind)), data.hex()) for kind, data in batch]
    jobs += [(str(fuzzed.root / "states" / "fz" / "statevector.npy"), data.hex())
             for kind, data in batch if kind == "qasm"]
    before = os.listdir(fuzzed.qubits / "tasks")
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         WRITER], input=json.dumps(jobs), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout)
    assert set(codes) <= ALLOWED, [errno.errorcode.get(c, c) for c in codes]
    assert fuzzed.proc.poll() is None
    assert vm_rss_kb(fuzzed.proc.pid) < RSS_BOUND_KB
    assert os.listdir(fuzzed.qubits / "tasks") == before  # root's task is not theirs
