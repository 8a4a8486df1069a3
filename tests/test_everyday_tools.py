"""Everyday tools on the mount behave as on a plain directory: exact sizes for tar and rsync,
no symlink loops for find -L and diff -r, backups that restore, nothing written that
vanishes, what was read before a remount still there after it, honest version retention."""

import json
import os
import subprocess
import time

import pytest

from tests.conftest import BELL, GHZ3
from tests.test_circuit_writes import versions
from tests.test_coordinator import wait_status, write_workflow
from tests.test_qubits import command

pytestmark = pytest.mark.fuse

WORKFLOW = """qubits: 2
stages:
  - name: entangle
    circuit: bell
    shots: 100
    checkpoint: true
"""


def populate(qfs) -> None:
    """Circuits with versions, a refusal, a result, a task with a run and a trigger, a
    finished workflow with its checkpoint: every kind of file the mount serves."""
    bell = qfs.write_circuit("bell")
    (bell / "latest.qasm").write_text(BELL + "// second\n")
    qfs.write_circuit("ghz", GHZ3)
    with pytest.raises(OSError):
        qfs.write_circuit("ghz", "OPENQASM 3.0;\nqubit[1] q;\nbogus q;\n")
    command(qfs.qubits / "ctl", "alloc 2 task=t")
    task = qfs.qubits / "tasks" / "t"
    physical = (task / "mapping").read_text().split()[1]
    command(qfs.qubits / physical / "ctl", "on 1 do x q" + physical[1:])
    command(task / "ctl", "run bell shots=50 seed=1")
    write_workflow(qfs, "wf", WORKFLOW)
    wait_status(qfs, "wf", ("done",))


def every_file(root) -> list[str]:
    found = []
    for top, _dirs, files in os.walk(root):
        found.extend(os.path.join(top, f) for f in files)
    return found


def test_every_file_reports_the_size_a_read_returns(qfs, tmp_path):
    populate(qfs)
    files = every_file(qfs.root)
    for must in ("circuits/ghz/errors", ".qfs/log", ".qfs/metrics", "qubits/q0/status",
                 "qubits/tasks/t/mapping", "qubits/tasks/t/state.json",
                 "qubits/tasks/t/triggers", "qubits/tasks/t/result.json",
                 "workflows/wf/status", "workflows/wf/result.json"):
        assert str(qfs.root / must) in files
    wrong = {}
    for path in files:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            data = f.read()
        if size != len(data):
            wrong[path] = (size, len(data))
    assert wrong == {}
    assert (qfs.circuits / "ghz" / "errors").stat().st_size > 0
    # tar reads st_size bytes and compares the attributes before and after: no complaint,
    # about a file or a directory (/states's times were the moment of each stat).
    (qfs.root / "states" / "waiting").mkdir()  # made, nothing imported yet
    done = subprocess.run(["tar", "cf", str(tmp_path / "c.tar"), "-C", str(qfs.root),
                           "circuits", "states", "workflows", "qubits/tasks"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    subprocess.run(["tar", "xf", str(tmp_path / "c.tar"), "-C", str(tmp_path)], check=True)
    for name in ("ghz/errors", "bell/stats.json", "bell/v2.qasm"):
        assert (tmp_path / "circuits" / name).read_bytes() == (qfs.circuits / name).read_bytes()


def test_live_files_keep_their_mtime_until_they_change(qfs):
    errors = qfs.circuits / "ghz" / "errors"
    qfs.write_circuit("ghz", GHZ3)
    before = os.stat(errors)
    time.sleep(0.05)
    assert os.stat(errors).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(OSError):
        qfs.write_circuit("ghz", "OPENQASM 3.0;\nqubit[1] q;\nbogus q;\n")
    after = os.stat(errors)
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_size > before.st_size


def seven_circuits(qfs) -> None:
    for i in range(7):
        qfs.write_circuit(f"c{i}", BELL + f"// {i}\n" + "x q[1];\n" * i)


def timed(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


def test_no_link_leads_into_a_directory_that_contains_it(qfs, tmp_path):
    seven_circuits(qfs)
    links = [os.path.join(top, n) for top, dirs, files in os.walk(qfs.circuits)
             for n in dirs + files if os.path.islink(os.path.join(top, n))]
    assert len(links) == 7 * 6
    for link in links:
        assert os.path.isfile(link), (link, os.readlink(link))
    copy, copy_s = timed(["cp", "-a", str(qfs.circuits), str(tmp_path / "copy")])
    assert copy.returncode == 0, copy.stderr
    budget = 10 * copy_s + 5  # an exponential walk of 7 circuits runs for minutes
    for args in (["find", "-L", str(qfs.root)],
                 ["grep", "-R", "-c", "cx", str(qfs.circuits)],
                 ["diff", "-r", str(qfs.circuits), str(tmp_path / "copy")]):
        done, seconds = timed(args)
        assert done.returncode == 0, (args, done.stderr)
        assert seconds < budget, (args, seconds, copy_s)


def test_refusals_and_last_runs_outlive_a_remount(mount_factory):
    first = mount_factory()
    bell = first.write_circuit("bell")
    with pytest.raises(OSError):
        (bell / "latest.qasm").write_text("OPENQASM 2.0;\nqreg q[1];\nbogus q[0];\n")
    command(first.qubits / "ctl", "alloc 2 task=t")
    command(first.qubits / "tasks" / "t" / "ctl", "run bell shots=20 seed=3")
    for i in range(1005):  # more refusals than the log keeps
        with pytest.raises(OSError):
            os.mkdir(first.circuits / f"-bad{i}")
    errors = (bell / "errors").read_text()
    log = (first.root / ".qfs" / "log").read_text()
    result = (first.qubits / "tasks" / "t" / "result.json").read_text()
    assert "bogus" in errors and len(log.splitlines()) == 1000 and '"counts"' in result
    first.stop()
    second = mount_factory(data=first.data)
    assert (second.circuits / "bell" / "errors").read_text() == errors
    assert (second.root / ".qfs" / "log").read_text() == log
    assert (second.qubits / "tasks" / "t" / "result.json").read_text() == result
    assert "result.json" in os.listdir(second.qubits / "tasks" / "t")


def test_retention_is_logged_and_pinned_versions_survive(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_versions_per_artifact: 3\n")
    qfs = mount_factory(extra=["--config", str(config)])
    bell = qfs.write_circuit("bell")
    os.setxattr(bell / "v1.qasm", "user.qfs.pinned", b"1")
    assert os.getxattr(bell / "v1.qasm", "user.qfs.pinned") == b"1"

    def edit(i: int) -> None:
        (bell / "latest.qasm").write_text(BELL + f"// edit {i}\n")

    for i in range(2, 7):
        edit(i)
    assert versions(bell) == [1, 4, 5, 6]
    assert (bell / "v1.qasm").read_text() == BELL
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "retention /circuits/bell: dropped v2" in log and "dropped v3" in log
    assert json.loads((bell / "meta.json").read_text())["pinned"] == [1]
    # meta.json pins too; a document that names no pins keeps them.
    (bell / "meta.json").write_text('{"pinned": [1, 4]}')
    (bell / "meta.json").write_text('{"author": "alice"}')
    edit(7)
    assert versions(bell) == [1, 4, 5, 6, 7]  # pinned versions do not count
    os.removexattr(bell / "v1.qasm", "user.qfs.pinned")
    assert os.listxattr(bell / "v1.qasm") == []
    edit(8)
    assert versions(bell) == [4, 6, 7, 8]
    assert "dropped v1" in (qfs.root / ".qfs" / "log").read_text()


def make_history(qfs) -> None:
    """A circuit with three versions, the first pinned, metadata and a result."""
    qfs.write_circuit("ghz", GHZ3)
    bell = qfs.write_circuit("bell")
    for i in (2, 3):
        time.sleep(1.1)  # versions a second apart, so their times tell them apart
        (bell / "latest.qasm").write_text(BELL + f"// edit {i}\n")
    os.setxattr(bell / "v1.qasm", "user.qfs.pinned", b"1")
    (bell / "meta.json").write_text('{"author": "alice", "tags": ["demo"]}')
    (bell / "results" / "run1.json").write_text('{"counts": {"00": 3}}')


def same_tree(a, b) -> None:
    done = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("tool", ["cp", "rsync", "tar"])
def test_a_backup_written_back_restores_every_version(qfs, tmp_path, tool):
    make_history(qfs)
    bell, bak = qfs.circuits / "bell", tmp_path / "bak"
    subprocess.run(["cp", "-a", str(bell), str(bak)], check=True)
    subprocess.run(["tar", "cf", str(tmp_path / "bak.tar"), "-C", str(bak), "."], check=True)
    subprocess.run(["rm", "-r", str(bell)], check=True)
    assert not bell.exists()
    restore = {
        "cp": ["cp", "-a", str(bak), str(bell)],
        "rsync": ["rsync", "-a", f"{bak}/", f"{bell}/"],
        "tar": ["sh", "-c", f"mkdir {bell} && tar xf {tmp_path}/bak.tar -C {bell}"],
    }[tool]
    done = subprocess.run(restore, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (bell / "v3.qasm").read_text() == BELL + "// edit 3\n"
    same_tree(bak, bell)  # every version, meta.json (pins and creation time), stats, results
    assert versions(bell) == [1, 2, 3]
    # Written back again over the circuit: every file is the same, nothing changes.
    again = restore if tool == "rsync" else ["tar", "xf", f"{tmp_path}/bak.tar", "-C", str(bell)]
    done = subprocess.run(again, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    same_tree(bak, bell)


@pytest.mark.parametrize("order", [
    ["latest.qasm", "v1.qasm", "v2.qasm", "v3.qasm"],
    ["v3.qasm", "latest.qasm", "v1.qasm", "v2.qasm"],
    ["v1.qasm", "latest.qasm", "v3.qasm", "v2.qasm"],
    ["v2.qasm", "latest.qasm", "v1.qasm", "v3.qasm"],
])
def test_versions_written_back_in_any_order(qfs, order):
    programs = {f"v{i}.qasm": BELL + f"// {i}\n" for i in (1, 2, 3)}
    programs["latest.qasm"] = programs["v3.qasm"]
    fresh = qfs.circuits / "fresh"
    fresh.mkdir()
    for name in order:  # as cp -a and tar x write: O_EXCL, into the directory they made
        fd = os.open(fresh / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, programs[name].encode())
        os.close(fd)
    assert versions(fresh) == [1, 2, 3]
    for name, program in programs.items():
        assert (fresh / name).read_text() == program


def test_a_history_whose_programs_repeat_is_written_back_whole_in_any_order(qfs):
    """A version written as latest.qasm floats until a vN.qasm fixes it; a vN.qasm finding
    its bytes in a floating version fixes that version, so a later vM with the same program
    (a history A, B, A) does not take its place: no order loses a version."""
    import itertools
    import random

    a, b, c = (BELL + f"// {x}\n" for x in "abc")
    files = ["latest.qasm", "v1.qasm", "v2.qasm", "v3.qasm", "v4.qasm"]
    orders = {"aba": ({"v1.qasm": a, "v2.qasm": b, "v3.qasm": a},
                      list(itertools.permutations(files[:4]))),
              "abcb": ({"v1.qasm": a, "v2.qasm": b, "v3.qasm": c, "v4.qasm": b},
                       [("v1.qasm", "v3.qasm", "latest.qasm", "v4.qasm", "v2.qasm"),
                        *random.Random(4).sample(list(itertools.permutations(files)), 12)])}
    for label, (programs, permutations) in orders.items():
        programs["latest.qasm"] = programs[f"v{len(programs)}.qasm"]
        for i, order in enumerate(permutations):
            circuit = qfs.circuits / f"{label}{i}"
            circuit.mkdir()
            for name in order:
                fd = os.open(circuit / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, programs[name].encode())
                os.close(fd)
            assert versions(circuit) == list(range(1, len(programs))), order
            for name, program in programs.items():
                assert (circuit / name).read_text() == program, (order, name)


def test_tar_over_an_existing_circuit_ends(qfs, tmp_path):
    make_history(qfs)
    subprocess.run(["tar", "cf", str(tmp_path / "c.tar"), "-C", str(qfs.root), "circuits"],
                   check=True)

    def extract() -> None:
        done = subprocess.run(["tar", "xf", str(tmp_path / "c.tar"), "-C", str(qfs.root)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    extract()
    extract()  # unlinks what the first wrote (which once stayed shown: EEXIST forever)
    with pytest.raises(PermissionError):  # only a circuit made by mkdir takes them unread
        (qfs.circuits / "bell" / "stats.json").write_text("{}")
    assert versions(qfs.circuits / "bell") == [1, 2, 3]
    # bell's similar/01-ghz names no circuit when tar makes its placeholder, and does
    # again when tar replaces the placeholder by the link, ghz being written back by then.
    subprocess.run(["rm", "-r", str(qfs.circuits / "ghz")], check=True)
    extract()
    assert os.readlink(qfs.circuits / "bell" / "similar" / "01-ghz") == "../../ghz/latest.qasm"
    assert versions(qfs.circuits / "ghz") == [1]


def test_files_the_fabric_would_not_keep_are_refused(mount_factory, tmp_path):
    first = mount_factory()
    source = tmp_path / "x.qasm"
    source.write_text(BELL)
    kept = first.write_circuit("kept")
    (first.circuits / "newc").mkdir()
    for target in (first.circuits / "x.txt", first.circuits / "newc" / "x.qasm",
                   kept / "notes.txt", kept / "results" / "notes.txt"):
        done = subprocess.run(["cp", str(source), str(target)], capture_output=True, text=True)
        assert done.returncode != 0 and "Invalid argument" in done.stderr, target
        log = (first.root / ".qfs" / "log").read_text().splitlines()[-1]
        assert f"create /{target.relative_to(first.root)}: " in log
        assert "would not be kept" in log or "expected <run>.json" in log
    subprocess.run(["touch", str(first.circuits / "new.qasm")], check=True)
    # Editors' and tools' temporaries still work, as scratch files.
    for name in (".kept.swp", "4913", "sedAb12Cd", "latest.qasm~"):
        (first.circuits / "kept" / name).write_text("scratch")
    first.stop()
    second = mount_factory(data=first.data)
    assert sorted(os.listdir(second.circuits)) == ["kept", "new", "newc"]
    assert versions(second.circuits / "new") == []
    assert "x.qasm" not in os.listdir(second.circuits / "newc")


def test_created_is_read_only_but_its_value_can_be_written_back(qfs):
    bell = qfs.write_circuit("bell")
    created = os.getxattr(bell, "user.qfs.created")
    os.setxattr(bell, "user.qfs.created", created)  # what cp -a does over the circuit
    with pytest.raises(PermissionError):
        os.setxattr(bell, "user.qfs.created", b"2001-01-01T00:00:00Z")
    assert os.getxattr(bell, "user.qfs.created") == created
