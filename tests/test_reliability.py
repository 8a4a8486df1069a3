"""Reliability, bounded in time: concurrent writers, kill -9 during writes, fuzzed control
files, and a full disk."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levels.qasm import parse_program
from tests.conftest import BELL
from tests.test_qubits import command

pytestmark = pytest.mark.fuse

WRITER = textwrap.dedent("""
    import sys
    circuits, who, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    body = open(sys.argv[4]).read()
    for i in range(count):
        for name in ("shared", f"own{who}"):
            with open(f"{circuits}/{name}/latest.qasm", "w") as f:
                f.write(body + f"// writer {who} edit {i}\\n")
""")


def test_concurrent_writers_lose_no_version(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_versions_per_artifact: 1000\n")
    qfs = mount_factory(extra=["--config", str(config)])
    for name in ["shared", *(f"own{w}" for w in range(8))]:
        (qfs.circuits / name).mkdir()
    (tmp_path / "body.qasm").write_text(BELL)
    (tmp_path / "writer.py").write_text(WRITER)
    writers = [subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(qfs.circuits),
                                 str(w), "12", str(tmp_path / "body.qasm")]) for w in range(8)]
    assert all(w.wait(timeout=300) == 0 for w in writers)
    shared = qfs.circuits / "shared"
    numbers = sorted(int(n[1:-5]) for n in os.listdir(shared)
                     if n.startswith("v") and n.endswith(".qasm"))
    assert numbers == list(range(1, 8 * 12 + 1))  # every write a version, no gaps
    contents = {(shared / f"v{n}.qasm").read_text() for n in numbers}
    assert contents == {BELL + f"// writer {w} edit {i}\n" for w in range(8) for i in range(12)}
    for w in range(8):
        assert len([n for n in os.listdir(qfs.circuits / f"own{w}") if n.endswith(".qasm")
                    and n.startswith("v")]) == 12


COPIER = textwrap.dedent("""
    import os, sys
    circuits, log, body = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
    with open(log, "a") as done:
        for i in range(1000):
            f = open(f"{circuits}/k{i:04d}.qasm", "w")
            f.write(body + f"// copy {i}\\n")
            f.close()
            done.write(f"{i}\\n")
            done.flush()
""")


def test_kill_9_during_writes_keeps_every_closed_write(mount_factory, tmp_path):
    qfs = mount_factory()
    (tmp_path / "body.qasm").write_text(BELL)
    (tmp_path / "copier.py").write_text(COPIER)
    log = tmp_path / "closed.txt"
    copier = subprocess.Popen([sys.executable, str(tmp_path / "copier.py"), str(qfs.circuits),
                               str(log), str(tmp_path / "body.qasm")], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text().split()) < 150:
        assert time.monotonic() < deadline and copier.poll() is None
        time.sleep(0.05)
    qfs.proc.kill()
    qfs.proc.wait()
    qfs.proc = None
    copier.wait(timeout=60)
    subprocess.run(["fusermount3", "-u", "-z", str(qfs.root)], check=False)
    closed = [int(i) for i in log.read_text().split()]
    second = mount_factory(data=qfs.data)
    present = {n for n in os.listdir(second.circuits)}
    for i in closed:
        name = f"k{i:04d}"
        assert name in present, f"{name} was closed successfully but is gone"
        assert (second.circuits / name / "v1.qasm").read_text() == BELL + f"// copy {i}\n"
    for name in present:  # nothing partial: every stored version parses
        parse_program((second.circuits / name / "latest.qasm").read_bytes())


ALLOWED = {errno.EINVAL, errno.ENOENT, errno.EBUSY, errno.ENOSPC, errno.EACCES, errno.EEXIST,
           errno.EFBIG}


@pytest.fixture(scope="module")
def fuzz_mount(tmp_path_factory):
    from tests.conftest import Mount

    base = tmp_path_factory.mktemp("fuzz")
    mount = Mount(base / "mnt", base / "data", []).start()
    mount.write_circuit("bell")
    command(mount.qubits / "ctl", "alloc 2 task=fz topology=linear")
    (mount.root / "workflows" / "wf.yaml").write_text("stages:\n  - circuit: bell\n")
    deadline = time.monotonic() + 60
    while not (mount.root / "workflows" / "wf" / "status").read_text().startswith("done"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield mount
    mount.stop()
    assert "Traceback" not in mount.daemon_log()


def _snapshot(qfs) -> tuple:
    tasks = sorted(os.listdir(qfs.qubits / "tasks"))
    workflow = (qfs.root / "workflows" / "wf" / "status").read_text()
    return tasks, {t: (qfs.qubits / "tasks" / t / "mapping").read_text() for t in tasks}, \
        workflow


commands = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["resume", "cancel", "resume now", " resume"]),
    st.builds(lambda verb, rest: f"{verb} {rest}",
              st.sampled_from(["alloc", "release", "on", "off", "run", "measure", "set",
                               "checkpoint", "restore", "migrate", "apply", "reset"]),
              st.text(alphabet="abcdeqxyz0123456789=.;@ -_", max_size=40)),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=commands, target=st.sampled_from(["ctl", "q3/ctl", "tasks/fz/ctl",
                                              "../workflows/wf/ctl"]))
def test_fuzzed_control_commands_get_an_errno_and_change_nothing(fuzz_mount, line, target):
    qfs = fuzz_mount
    line = line.replace("\n", " ").replace("\x00", "")
    if "task=fz" in line or line.strip().startswith("release"):
        return  # commands that may legitimately change the fixture's own task
    before = _snapshot(qfs)
    try:
        command(qfs.qubits / target, line)
        ok = True
    except OSError as exc:
        assert exc.errno in ALLOWED, (line, exc)
        ok = False
    if not ok:
        assert _snapshot(qfs) == before, line
    else:  # a command that succeeded: undo any allocation so later examples start clean
        for task in set(_snapshot(qfs)[0]) - {"fz"}:
            command(qfs.qubits / "tasks" / task / "ctl", "release")
    assert (qfs.qubits / "q3" / "status").read_text()  # still serving


def test_full_disk_gives_enospc_and_keeps_what_was_stored(mount_factory, tmp_path):
    data = tmp_path / "small"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(data)], check=True)
    try:
        config = tmp_path / "qfs.yaml"
        config.write_text("circuit_fs:\n  max_versions_per_artifact: 100000\n")
        qfs = mount_factory(data=data / "d", extra=["--config", str(config)])
        big = BELL + "// " + "x" * 200_000 + "\n"
        stored = 0
        failure = None
        for i in range(400):
            try:
                with open(qfs.circuits / f"f{i:03d}.qasm", "w") as f:
                    f.write(big + f"// {i}\n")
                stored += 1
            except OSError as exc:
                failure = exc
                break
        assert failure is not None and failure.errno == errno.ENOSPC, failure
        assert "full" in (qfs.root / ".qfs" / "log").read_text()
        for i in range(stored):
            assert (qfs.circuits / f"f{i:03d}" / "v1.qasm").read_text() == big + f"// {i}\n"
        assert json.loads((qfs.root / ".qfs" / "health").read_text())["status"]
        qfs.stop()
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
