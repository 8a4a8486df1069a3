"""Workflow files as hostile input through the mount: refused completely at close (or at
the write() that takes one over its size), parsed off the event loop, served from renders
made once per change; a workflow that cannot start fails with its reason; cancel stops a
stage and frees its qubits."""

import errno
import os
import statistics
import threading
import time

import pytest

from tests.conftest import GHZ3
from tests.test_coordinator import wait_status, write_workflow
from tests.test_qubits import command, refused

pytestmark = pytest.mark.fuse

LIMIT = 256 * 1024  # levels.workflowdef.MAX_DEFINITION_BYTES, as the README states it


def close_errno(path, data: bytes) -> int | None:
    """Write `data` in one write() and close, as cp does; the errno of whichever failed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
    except OSError as exc:
        os.close(fd)
        return exc.errno
    try:
        os.close(fd)
    except OSError as exc:
        return exc.errno
    return None


def slowest_listing_while(work, directory) -> float:
    """Run `work` in a thread and list `directory` until it is done: the slowest ls."""
    thread = threading.Thread(target=work)
    thread.start()
    slowest = 0.0
    while True:
        started = time.monotonic()
        os.listdir(directory)
        slowest = max(slowest, time.monotonic() - started)
        if not thread.is_alive():
            break
        time.sleep(0.01)
    thread.join()
    return slowest


def test_a_large_workflow_is_refused_at_write_and_the_mount_stays_responsive(qfs):
    """A 6.9 MB file once held the event loop 32 s: now the write() that passes the limit
    fails (EFBIG, the limit in the reason), close() says it again, nothing starts, and an
    ls of another directory answers meanwhile."""
    qfs.write_circuit("ghz", GHZ3)
    big = qfs.root / "workflows" / "big.yaml"
    chunk = b"stages:\n" + b"  - {circuit: ghz}\n" * 4000  # 76 KB per write()
    seen: dict[str, object] = {}

    def write_big() -> None:
        fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        written = 0
        try:
            while written < 7_000_000:
                written += os.write(fd, chunk)
        except OSError as exc:
            seen["write"], seen["written"] = exc.errno, written
        try:
            os.close(fd)
        except OSError as exc:
            seen["close"] = exc.errno

    assert slowest_listing_while(write_big, qfs.circuits) < 1.0
    assert seen["write"] == errno.EFBIG and LIMIT - len(chunk) < seen["written"] <= LIMIT
    assert seen["close"] == errno.EFBIG
    assert f"at most {LIMIT} bytes" in (qfs.root / ".qfs" / "log").read_text()
    assert os.listdir(qfs.root / "workflows") == []
    assert os.listdir(qfs.qubits / "tasks") == []


def test_status_of_the_largest_workflow_is_served_from_its_render(qfs):
    """1000 stages (the limit) are parsed off the event loop and status reads are cheap;
    1001 are refused."""
    qfs.write_circuit("ghz", GHZ3)
    stages = "".join(f"  - {{circuit: ghz, name: s{i}}}\n" for i in range(1, 1000))
    text = "stages:\n  - {circuit: ghz, name: s0, delay: 600}\n" + stages
    slowest = slowest_listing_while(lambda: write_workflow(qfs, "long", text), qfs.circuits)
    assert slowest < 1.0
    status = wait_status(qfs, "long", ("running",))
    assert status.count("pending") == 1000
    times = []
    for _ in range(10):
        started = time.monotonic()
        (qfs.root / "workflows" / "long" / "status").read_text()
        times.append(time.monotonic() - started)
    assert statistics.median(times) < 0.05, times
    command(qfs.root / "workflows" / "long" / "ctl", "cancel")
    too_many = text + "  - {circuit: ghz, name: s1000}\n"
    assert close_errno(qfs.root / "workflows" / "more.yaml", too_many.encode()) == errno.EINVAL
    assert "1001 stages; at most 1000" in (qfs.root / ".qfs" / "log").read_text()


def stage(extra: str) -> str:
    return f"stages:\n  - {{circuit: ghz, {extra}}}\n"


REFUSED = [
    (stage("delay: -1"), errno.EINVAL, "stage 1 delay: Input should be greater than"),
    (stage("delay: .nan"), errno.EINVAL, "stage 1 delay: Input should be a finite number"),
    (stage("delay: .inf"), errno.EINVAL, "stage 1 delay: Input should be a finite number"),
    (stage("delay: 1.0e+9"), errno.EINVAL, "stage 1 delay: Input should be less than"),
    (stage("shots: 10000001"), errno.EINVAL, "stage 1 shots"),
    (stage("qubits: 100000"), errno.EINVAL, "stage 1 qubits"),
    ("qubits: 100000\n" + stage("shots: 1"), errno.EINVAL, "qubits: Input should be less"),
    (stage("qubits: 25"), errno.EINVAL, "stage 1 qubits"),
    (stage("format: bogus"), errno.EINVAL, "stage 1 format: Input should be 'auto'"),
    (stage("checkpoint: maybe"), errno.EINVAL, "stage 1 checkpoint"),
    ("topology: moebius\n" + stage("shots: 1"), errno.EINVAL, "topology"),
    ("stages:\n  - {circuit: ghz@v99}\n", errno.ENOENT, "ghz has no version 99"),
    ("stages:\n  - {circuit: ghz@v\u00b2}\n", errno.EINVAL, "stage 1 circuit"),
    ("stages:\n  - {circuit: empty}\n", errno.EINVAL, "circuit empty has no version"),
    ("stages:\n  - {circuit: nowhere}\n", errno.ENOENT, "no circuit nowhere"),
    (stage("name: " + "n" * 197), errno.EINVAL, "checkpoint name"),
    (stage("name: a/b"), errno.EINVAL, "stage 1 name"),
    ("1: one\n" + stage("shots: 1"), errno.EINVAL, "1: Keys should be strings"),
    (stage("2: two"), errno.EINVAL, "stage 1 2: Keys should be strings"),
    ("? [a, b]\n: c\n" + stage("shots: 1"), errno.EINVAL, "not UTF-8 YAML"),
    (stage("name: a") + "  - {circuit: ghz, name: a}\n", errno.EINVAL, "must be distinct"),
    ("stages: []\n", errno.EINVAL, "stages: List should have at least 1 item"),
    ("stages:\n  - " + "[" * 2000 + "]" * 2000 + "\n", errno.EINVAL, "not UTF-8 YAML"),
]


def test_every_workflow_that_could_not_run_is_refused_at_close(qfs):
    """Each problem a run would meet is found at close: EINVAL (ENOENT for a circuit or
    version that does not exist) with the reason in /.qfs/log, never EIO, nothing starts."""
    qfs.write_circuit("ghz", GHZ3)
    os.mkdir(qfs.circuits / "empty")
    log = qfs.root / ".qfs" / "log"
    target = qfs.root / "workflows" / "bad.yaml"
    for text, code, reason in REFUSED:
        assert close_errno(target, text.encode()) == code, text
        assert reason in log.read_text().splitlines()[-1], (text, log.read_text()[-300:])
    assert close_errno(target, b"stages:\n  - {circuit: \xff}\n") == errno.EINVAL
    assert "not UTF-8 YAML" in log.read_text().splitlines()[-1]
    # A name that fits a file but not the workflow's task wf-<name> (200 bytes).
    assert close_errno(qfs.root / "workflows" / f"{'w' * 198}.yaml",
                       stage("name: a").encode()) == errno.EINVAL
    assert "task name" in log.read_text().splitlines()[-1]
    # A workflow named x.yaml (its directory would read as a definition): EINVAL at open.
    with pytest.raises(OSError) as caught:
        (qfs.root / "workflows" / "x.yaml.yaml").write_text(stage("shots: 1"))
    assert caught.value.errno == errno.EINVAL
    assert "may not end in .yaml" in log.read_text().splitlines()[-1]
    assert os.listdir(qfs.root / "workflows") == []
    assert os.listdir(qfs.qubits / "tasks") == []
    write_workflow(qfs, "good", stage("shots: 10, delay: 0.0, format: tensor_network, "
                                      "checkpoint: true"))
    assert wait_status(qfs, "good", ("done", "failed")).startswith("done")


SMALL_DEVICE = """live_qubit_mgr:
  devices:
    - {name: small, qubits: 4, topology: all_to_all}
"""


def test_a_workflow_that_cannot_start_fails_with_its_reason(mount_factory, tmp_path):
    """No qubits free: the workflow fails (never stays running or pending), says why in
    status and /.qfs/log, holds nothing, and resume runs it once qubits are free."""
    config = tmp_path / "qfs.yaml"
    config.write_text(SMALL_DEVICE)
    qfs = mount_factory(extra=["--config", str(config)])
    qfs.write_circuit("ghz", GHZ3)
    command(qfs.qubits / "ctl", "alloc 4 task=hog")
    write_workflow(qfs, "w", stage("shots: 10"))
    status = wait_status(qfs, "w", ("failed", "done"), timeout=20)
    assert status.startswith("failed: ") and "qubits" in status, status
    assert "workflows/w: failed: " in (qfs.root / ".qfs" / "log").read_text()
    assert os.listdir(qfs.qubits / "tasks") == ["hog"]
    command(qfs.qubits / "tasks" / "hog" / "ctl", "release")
    command(qfs.root / "workflows" / "w" / "ctl", "resume")
    assert wait_status(qfs, "w", ("done", "failed")) == "done\nstage1 done\n"


def test_cancel_interrupts_a_stage_and_frees_its_qubits(qfs):
    """cancel during a stage's delay stops it at once: the reply comes when it stopped,
    status says cancelled, the allocation is gone and the workflow can be written again."""
    qfs.write_circuit("ghz", GHZ3)
    ctl = qfs.root / "workflows" / "w" / "ctl"
    write_workflow(qfs, "w", "stages:\n  - {circuit: ghz, name: first}\n"
                             "  - {circuit: ghz, name: wait, delay: 600}\n")
    deadline = time.monotonic() + 30
    while "first done" not in (qfs.root / "workflows" / "w" / "status").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert os.listdir(qfs.qubits / "tasks") == ["wf-w"]
    started = time.monotonic()
    command(ctl, "cancel")
    assert time.monotonic() - started < 5
    assert ctl.read_text() == "ok: cancelled w\n"
    status = (qfs.root / "workflows" / "w" / "status").read_text()
    assert status == "cancelled: cancelled by its ctl during stage wait\nfirst done\nwait pending\n"
    assert os.listdir(qfs.qubits / "tasks") == []
    assert refused(ctl, "cancel") == errno.EINVAL  # no longer running
    write_workflow(qfs, "w", "stages:\n  - {circuit: ghz, name: first}\n")
    assert wait_status(qfs, "w", ("done", "failed")) == "done\nfirst done\n"
