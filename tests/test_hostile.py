"""Hostile programs: nothing written into /circuits may crash the daemon, exhaust it or
make it read a host file; native crashes cost one request; workers die with the daemon."""

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BELL

pytestmark = pytest.mark.fuse


def write(path: Path, data: bytes) -> int:
    """Write and close; 0 on success, else the errno close() (or write()) gave."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        return exc.errno or -1
    return 0


def nested(depth: int) -> bytes:
    return (b'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nrz(' + b"(" * depth
            + b"0.1" + b")" * depth + b") q[0];\n")


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_deep_nesting_is_refused_with_the_limit(qfs):
    started = time.monotonic()
    assert write(qfs.circuits / "deep.qasm", nested(10_000)) == errno.EINVAL
    assert time.monotonic() - started < 10
    assert "nested more than 64 deep" in (qfs.root / ".qfs" / "log").read_text()
    assert not (qfs.circuits / "deep").exists()
    qfs.write_circuit("after")
    assert (qfs.circuits / "after" / "v1.qasm").read_text() == BELL


def test_a_parser_crash_costs_one_request_not_the_mount(mount_factory, tmp_path):
    """With the nesting check lifted, Qiskit's importer overflows its stack on 20,000
    parentheses: the worker dies, the write is EINVAL with the reason, the daemon serves on."""
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_program_nesting: 1000000\n")
    qfs = mount_factory(extra=["--config", str(config)])
    qfs.write_circuit("before")
    assert write(qfs.circuits / "deep.qasm", nested(20_000)) == errno.EINVAL
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "the parser could not handle this program: worker crashed" in log
    assert qfs.proc.poll() is None
    qfs.write_circuit("after")
    assert sorted(os.listdir(qfs.circuits)) == ["after", "before"]
    assert (qfs.circuits / "before" / "v1.qasm").read_text() == BELL


@pytest.mark.parametrize("program, reason", [
    (b"OPENQASM 2.0;\nqreg q[100000000];\n", "declares 100000000 qubits; the limit is 1024"),
    (b"OPENQASM 3.0;\nqubit[3000000] q;\n", "declares 3000000 qubits"),
    (b"OPENQASM 3.0;\nbit[3000000] c;\n", "declares 3000000 classical bits"),
    (b"OPENQASM 3.0;\nh $5000000;\n", "declares 5000001 qubits"),
])
def test_poison_sizes_are_refused_before_parsing(qfs, program, reason):
    before = vm_rss_kb(qfs.proc.pid)
    assert write(qfs.circuits / "poison.qasm", program) == errno.EFBIG
    assert reason in (qfs.root / ".qfs" / "log").read_text()
    assert vm_rss_kb(qfs.proc.pid) < before + 50_000
    assert not (qfs.circuits / "poison").exists()


def test_program_size_and_operation_limits(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_program_bytes: 4096\n  max_program_operations: 50\n")
    qfs = mount_factory(extra=["--config", str(config)])
    many = BELL + "x q[0];\n" * 60
    assert write(qfs.circuits / "many.qasm", many.encode()) == errno.EFBIG
    assert "64 operations; the limit is 50" in (qfs.root / ".qfs" / "log").read_text()
    big = BELL + "// padding\n" * 400
    assert write(qfs.circuits / "big.qasm", big.encode()) == errno.EFBIG
    assert "at most 4096 bytes (circuit_fs.max_program_bytes)" in \
        (qfs.root / ".qfs" / "log").read_text()
    assert os.listdir(qfs.circuits) == []


@pytest.mark.parametrize("target", ["/etc/hostname", "../../../../etc/hostname", "DATA/state.key",
                                    "/proc/self/environ"])
def test_includes_never_open_host_files(qfs, target):
    target = target.replace("DATA", str(qfs.data))
    program = f'OPENQASM 2.0;\ninclude "{target}";\nqreg q[1];\n'.encode()
    assert write(qfs.circuits / "inc.qasm", program) == errno.EINVAL
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "only qelib1.inc and stdgates.inc can be included" in log
    if target == "/etc/hostname":
        assert Path(target).read_text().strip() not in log.replace(target, "")


def test_openqasm2_without_a_version_line_is_accepted(qfs):
    program = BELL.replace("OPENQASM 2.0;\n", "")
    assert write(qfs.circuits / "legacy.qasm", program.encode()) == 0
    stats = (qfs.circuits / "legacy" / "stats.json").read_text()
    assert '"qasm_version": 2' in stats
    assert (qfs.circuits / "legacy" / "v1.qasm").read_text() == program


def test_reasons_name_the_line_and_column_and_unsupported_constructs(qfs):
    syntax = b'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0]\ncx q[0], q[1];\n'
    assert write(qfs.circuits / "s.qasm", syntax) == errno.EINVAL
    loop = (b'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
            b"for int i in [0:1] { h q[i]; }\n")
    assert write(qfs.circuits / "f.qasm", loop) == errno.EINVAL
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "Expected `,` at line 4, column 7" in log
    assert "ForStmt is not supported by Qiskit's OpenQASM 3 importer" in log


def test_the_mount_starts_a_parse_worker_before_the_first_write(qfs):
    """The first cp after a mount does not wait for an interpreter to import Qiskit."""
    def parse_workers() -> list[int]:
        found = []
        for pid in children(qfs.proc.pid):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
                if argv[1:3] == [b"-m", b"levels.workers"] and argv[-1] == b"qiskit.qasm3":
                    found.append(pid)
        return found

    deadline = time.monotonic() + 30
    while not parse_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert parse_workers(), "no parse worker was started at mount"
    assert not list(qfs.circuits.iterdir())  # nothing was written: the mount started it


def test_workers_die_with_the_daemon(mount_factory, tmp_path):
    qfs = mount_factory()
    qfs.write_circuit("bell")
    assert (qfs.circuits / "bell" / "v1.qasm3").read_bytes()
    workers = children(qfs.proc.pid)
    assert workers, "the parse should have started a worker process"
    qfs.proc.kill()
    qfs.proc.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    subprocess.run(["fusermount3", "-u", "-z", str(qfs.root)], capture_output=True)
    qfs.proc = None


def test_a_fatal_signal_writes_every_stack_to_the_log(mount_factory, tmp_path):
    qfs = mount_factory()
    os.kill(qfs.proc.pid, signal.SIGSEGV)
    qfs.proc.wait(timeout=20)
    subprocess.run(["fusermount3", "-u", "-z", str(qfs.root)], capture_output=True)
    qfs.proc = None
    text = (qfs.data / "qfs.log").read_text()
    assert "Fatal Python error: Segmentation fault" in text
    assert "most recent call first" in text


def test_a_task_over_24_qubits_lists_and_runs_without_a_live_state(qfs):
    """Listing a task or running a small circuit on it never builds its live state (a
    26-qubit state vector would be 1 GiB, and live states stop at 24 qubits)."""
    import json

    with open(qfs.qubits / "ctl", "w") as f:
        f.write("alloc 26 task=big\n")
    qfs.write_circuit("bell")
    task = qfs.qubits / "tasks" / "big"
    with open(task / "ctl", "w") as f:
        f.write("run bell shots=100 seed=1\n")
    assert {"ctl", "mapping", "state.json", "result.json"} <= set(os.listdir(task))
    assert sum(json.loads((task / "result.json").read_text())["counts"].values()) == 100
    state = json.loads((task / "state.json").read_text())
    assert "untouched" in state["live"]["state"]
    assert vm_rss_kb(qfs.proc.pid) < 1_000_000


def test_nobody_cannot_restore_roots_checkpoint(mount_factory):
    """A restored state can be read out; a checkpoint's state is its owner's alone."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="qfs-perm-"))
    base.chmod(0o755)
    qfs = mount_factory(base=base)
    with open(qfs.qubits / "ctl", "w") as f:
        f.write("alloc 2 task=mine\n")
    with open(qfs.qubits / "tasks" / "mine" / "ctl", "w") as f:
        f.write("checkpoint secret format=statevector\n")

    def as_nobody(line: str, ctl: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
             f"echo '{line}' > {ctl}"], capture_output=True, text=True)

    assert as_nobody("alloc 2 task=theirs", qfs.qubits / "ctl").returncode == 0
    done = as_nobody("restore secret", qfs.qubits / "tasks" / "theirs" / "ctl")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert "checkpoint secret belongs to uid 0" in (qfs.root / ".qfs" / "log").read_text()
    with open(qfs.qubits / "tasks" / "mine" / "ctl", "w") as f:
        f.write("restore secret\n")  # the owner may


def test_views_are_the_same_bytes_on_every_mount(mount_factory):
    """vN.qpy names the circuit after the fabric's circuit, not Qiskit's counter."""
    qfs = mount_factory()
    qfs.write_circuit("bell")
    qfs.write_circuit("other")
    views = {n: (qfs.circuits / "bell" / f"v1.{n}").read_bytes() for n in ("qpy", "qasm3", "txt")}
    assert b"bell" in views["qpy"]
    qfs.stop()
    again = mount_factory(data=qfs.data)
    (again.circuits / "other" / "v1.qpy").read_bytes()  # another render first
    for name, data in views.items():
        assert (again.circuits / "bell" / f"v1.{name}").read_bytes() == data, name


def test_a_ctl_shows_the_reply_to_its_last_command(qfs):
    ctl = qfs.qubits / "ctl"
    with open(ctl, "w") as f:
        f.write("alloc 2 task=a\n")
    assert ctl.read_text().startswith("ok: ")
    with pytest.raises(OSError) as refused, open(ctl, "wb") as f:
        f.write(b"alloc \xff\xfe\n")
    assert refused.value.errno == errno.EINVAL
    assert ctl.read_text().startswith("error: EINVAL: commands are UTF-8 text")


def test_long_runs_never_hold_up_a_cp(mount_factory):
    """Runs have their own workers: with two noisy simulations in flight (every run worker
    busy), a cp is parsed and committed at once, not after them."""
    import threading
    import time

    qfs = mount_factory()
    n = 12
    slow = ("OPENQASM 3.0;\ninclude \"stdgates.inc\";\n" + f"qubit[{n}] q;\nbit[{n}] c;\nh q[0];\n"
            + "".join(f"cx q[{i}], q[{i + 1}];\n" for i in range(n - 1)) * 3 + "c = measure q;\n")
    qfs.write_circuit("slow", slow)
    for task in ("a", "b"):
        with open(qfs.qubits / "ctl", "w") as f:
            f.write(f"alloc {n} task={task} topology=linear\n")

    def run(task: str) -> None:
        ctl = qfs.qubits / "tasks" / task / "ctl"
        with contextlib.suppress(OSError), open(ctl, "w") as f:  # the kill below ends it
            f.write("run slow shots=4000 noise=on seed=1\n")

    runs = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for thread in runs:
        thread.start()
    time.sleep(2.0)  # both runs are simulating now
    started = time.monotonic()
    qfs.write_circuit("meanwhile")
    took = time.monotonic() - started
    still_running = sum(thread.is_alive() for thread in runs)
    assert (qfs.circuits / "meanwhile" / "v1.qasm").read_text() == BELL
    qfs.proc.kill()  # rather than wait for the runs: their workers die with the daemon
    qfs.stop()
    for thread in runs:
        thread.join(timeout=60)
    assert still_running == 2, "the runs ended before the cp: the test proves nothing"
    assert took < 5.0, f"a cp took {took:.1f} s behind two runs"


def test_a_run_whose_task_was_released_meanwhile_keeps_its_result_to_itself(qfs):
    """Released during its run, a task's name taken by a new allocation: the run's result
    is stored under its circuit and its write succeeds, but the new task has not run."""
    import threading
    import time

    n = 12
    slow = ("OPENQASM 3.0;\ninclude \"stdgates.inc\";\n" + f"qubit[{n}] q;\nbit[{n}] c;\nh q[0];\n"
            + "".join(f"cx q[{i}], q[{i + 1}];\n" for i in range(n - 1)) * 3 + "c = measure q;\n")
    qfs.write_circuit("slow", slow)
    with open(qfs.qubits / "ctl", "w") as f:
        f.write(f"alloc {n} task=t topology=linear\n")
    outcome: list[object] = []

    def run() -> None:
        try:
            with open(qfs.qubits / "tasks" / "t" / "ctl", "w") as f:
                f.write("run slow shots=2000 noise=on seed=1\n")
            outcome.append("ok")
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.0)  # the run takes seconds
    for line in ("release task=t", "alloc 2 task=t"):
        with open(qfs.qubits / "ctl", "w") as f:
            f.write(line + "\n")
    still_running = thread.is_alive()
    thread.join(timeout=600)
    assert still_running, "the run ended before the release: the test proves nothing"
    assert outcome == ["ok"]
    assert len(os.listdir(qfs.circuits / "slow" / "results")) == 1
    assert "result.json" not in os.listdir(qfs.qubits / "tasks" / "t")

