"""Level 1 through the mount: qubit files, allocation, isolation, errors, permissions."""

import errno
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from levels.devices import heavy_hex_edges

pytestmark = pytest.mark.fuse

EAGLE = {frozenset(e) for e in heavy_hex_edges(127)}


def command(ctl: Path, line: str) -> None:
    """One write of one command, as `echo line > ctl` does (but seeing the errno)."""
    fd = os.open(ctl, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def refused(ctl: Path, line: str) -> int:
    with pytest.raises(OSError) as caught:
        command(ctl, line)
    return caught.value.errno


def mapping(qfs, task: str) -> list[int]:
    lines = (qfs.qubits / "tasks" / task / "mapping").read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"q{i}" for i in range(len(lines))]
    return [int(line.split()[1][1:]) for line in lines]


def test_qubit_files(qfs):
    q17 = qfs.qubits / "q17"
    assert sorted(os.listdir(q17)) == ["calibration.json", "ctl", "neighbors", "status"]
    assert len([n for n in os.listdir(qfs.qubits) if n.startswith("q")]) == 127
    assert (q17 / "status").read_text() == "free\n"
    neighbors = [int(n[1:]) for n in (q17 / "neighbors").read_text().split()]
    assert {frozenset((17, n)) for n in neighbors} <= EAGLE and len(neighbors) >= 2
    calibration = json.loads((q17 / "calibration.json").read_text())
    assert 0 < calibration["readout_error"] < 0.2 and calibration["t1"] > 0
    assert calibration["t2"] > 0 and set(calibration["cx_error"]) == {f"q{n}" for n in neighbors}


@pytest.mark.parametrize(("count", "topology", "cycle"), [
    (4, "linear", False), (16, "linear", False), (12, "ring", True), (8, "any", False),
    (4, "star", False),
])
def test_allocation_has_the_shape_asked_for(qfs, count, topology, cycle):
    command(qfs.qubits / "ctl", f"alloc {count} task=t topology={topology}")
    qubits = mapping(qfs, "t")
    assert len(set(qubits)) == count
    if topology in ("linear", "ring"):
        pairs = list(zip(qubits, qubits[1:] + (qubits[:1] if cycle else []), strict=False))
        assert all(frozenset(p) in EAGLE for p in pairs), qubits
    elif topology == "star":
        assert all(frozenset((qubits[0], q)) in EAGLE for q in qubits[1:])
    else:  # connected
        reached, frontier = {qubits[0]}, [qubits[0]]
        while frontier:
            q = frontier.pop()
            for n in qubits:
                if n not in reached and frozenset((q, n)) in EAGLE:
                    reached.add(n)
                    frontier.append(n)
        assert reached == set(qubits)
    for logical, q in enumerate(qubits):
        assert (qfs.qubits / f"q{q}" / "status").read_text() == \
            f"allocated to t (logical q{logical})\n"
    assert (qfs.qubits / "ctl").read_text().startswith("ok: allocated t:")


def test_release_frees_everything(qfs):
    command(qfs.qubits / "ctl", "alloc 3 task=a isolate=spatial")
    qubits = mapping(qfs, "a")
    state = json.loads((qfs.qubits / "tasks" / "a" / "state.json").read_text())
    buffers = [int(q[1:]) for q in state["buffers"]]
    assert buffers and all((qfs.qubits / f"q{b}" / "status").read_text() ==
                           "isolated (buffer of a)\n" for b in buffers)
    command(qfs.qubits / "tasks" / "a" / "ctl", "release")
    assert os.listdir(qfs.qubits / "tasks") == []
    assert all((qfs.qubits / f"q{q}" / "status").read_text() == "free\n"
               for q in qubits + buffers)


def test_errors_have_errno_reason_and_change_nothing(qfs):
    ctl = qfs.qubits / "ctl"
    command(ctl, "alloc 2 task=held")
    held = mapping(qfs, "held")
    assert refused(ctl, "alloc 200 task=big") == errno.ENOSPC
    assert "200 qubits asked" in ctl.read_text()
    assert refused(ctl, "alloc 3 task=tri topology=triangle") == errno.ENOSPC
    assert refused(ctl, "alloc four task=x") == errno.EINVAL
    assert refused(ctl, "alloc 2 task=x topology=moebius") == errno.EINVAL
    assert refused(ctl, "frobnicate") == errno.EINVAL
    assert "unknown command" in ctl.read_text()
    assert refused(ctl, "alloc 2 task=held") == errno.EBUSY
    assert refused(ctl, "release task=nobody") == errno.ENOENT
    assert refused(ctl, "release task=") == errno.EINVAL  # names no task
    assert "task= needs a value" in ctl.read_text()
    assert refused(ctl, "alloc 2 task=picky noise=0.99999") == errno.ENOSPC
    assert refused(qfs.qubits / f"q{held[0]}" / "ctl", "alloc task=other") == errno.EBUSY
    assert "allocated to held" in (qfs.qubits / f"q{held[0]}" / "ctl").read_text()
    assert os.listdir(qfs.qubits / "tasks") == ["held"]
    assert mapping(qfs, "held") == held
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "200 qubits asked" in log and "unknown command" in log


def test_single_qubit_alloc_and_release(qfs):
    command(qfs.qubits / "q17" / "ctl", "alloc task=solo")
    command(qfs.qubits / "q12" / "ctl", "alloc task=solo")
    assert mapping(qfs, "solo") == [17, 12]
    command(qfs.qubits / "q17" / "ctl", "release")
    assert mapping(qfs, "solo") == [12]
    assert (qfs.qubits / "q17" / "status").read_text() == "free\n"
    assert refused(qfs.qubits / "q17" / "ctl", "release") == errno.EINVAL


def test_spatial_isolation_is_enforced_on_later_allocations(qfs):
    command(qfs.qubits / "ctl", "alloc 4 task=iso topology=linear isolate=strict")
    iso = set(mapping(qfs, "iso"))
    buffers = {int(q[1:]) for q in json.loads(
        (qfs.qubits / "tasks" / "iso" / "state.json").read_text())["buffers"]}
    for b in buffers:
        assert refused(qfs.qubits / f"q{b}" / "ctl", "alloc task=intruder") == errno.EBUSY
    command(qfs.qubits / "ctl", "alloc 100 task=many")
    many = set(mapping(qfs, "many"))
    assert not many & (iso | buffers)
    assert not any(frozenset((a, b)) in EAGLE for a in iso for b in many)


def test_one_qubit_asked_for_by_its_ctl_is_kept_apart_as_a_set_is(qfs):
    command(qfs.qubits / "q79" / "ctl", "alloc task=plain")
    assert refused(qfs.qubits / "q78" / "ctl", "alloc task=apart isolate=spatial") \
        == errno.EBUSY
    assert "next to q79 of task plain" in (qfs.qubits / "q78" / "ctl").read_text()
    command(qfs.qubits / "q77" / "ctl", "alloc task=apart isolate=spatial")
    assert refused(qfs.qubits / "q78" / "ctl", "alloc task=apart") == errno.EBUSY
    assert mapping(qfs, "apart") == [77]


def test_temporal_isolation_cools_released_qubits(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("live_qubit_mgr:\n  temporal_cooldown_ms: 1500\n")
    qfs = mount_factory(extra=["--config", str(config)])
    command(qfs.qubits / "q40" / "ctl", "alloc task=hot isolate=temporal")
    command(qfs.qubits / "tasks" / "hot" / "ctl", "release")
    assert (qfs.qubits / "q40" / "status").read_text() == "cooling (released by hot)\n"
    assert refused(qfs.qubits / "q40" / "ctl", "alloc task=next") == errno.EBUSY
    time.sleep(1.6)
    command(qfs.qubits / "q40" / "ctl", "alloc task=next")
    assert mapping(qfs, "next") == [40]


def test_allocations_persist_across_remount(mount_factory):
    first = mount_factory()
    command(first.qubits / "ctl", "alloc 5 task=keep topology=linear isolate=spatial")
    kept = mapping(first, "keep")
    first.stop()
    second = mount_factory(data=first.data)
    assert mapping(second, "keep") == kept
    assert json.loads((second.qubits / "tasks" / "keep" / "state.json").read_text())[
        "isolate"] == "spatial"


def test_other_devices_appear_under_devices(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("live_qubit_mgr:\n  devices:\n"
                      "    - {name: eagle, qubits: 127, topology: heavy_hex}\n"
                      "    - {name: lab, qubits: 9, topology: grid, seed: 3}\n")
    qfs = mount_factory(extra=["--config", str(config)])
    lab = qfs.root / "devices" / "lab"
    assert os.listdir(qfs.root / "devices") == ["lab"]
    assert len([n for n in os.listdir(lab) if n.startswith("q")]) == 9
    command(lab / "ctl", "alloc 4 task=g topology=grid")
    assert os.listdir(lab / "tasks") == ["g"]
    assert os.listdir(qfs.qubits / "tasks") == []
    assert refused(lab / "ctl", "alloc 6 task=h topology=ring") == errno.ENOSPC


def test_another_users_task_is_refused(mount_factory):
    base = Path(tempfile.mkdtemp(prefix="qfs-perm-"))
    base.chmod(0o755)
    qfs = mount_factory(base=base)
    command(qfs.qubits / "ctl", "alloc 2 task=roots")

    def as_nobody(line: str, ctl: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
             f"echo '{line}' > {ctl}"], capture_output=True, text=True)

    done = as_nobody("release", qfs.qubits / "tasks" / "roots" / "ctl")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert os.listdir(qfs.qubits / "tasks") == ["roots"]
    assert "belongs to uid 0" in (qfs.root / ".qfs" / "log").read_text()
    done = as_nobody("alloc 2 task=theirs", qfs.qubits / "ctl")
    assert done.returncode == 0, done.stderr
    state = json.loads((qfs.qubits / "tasks" / "theirs" / "state.json").read_text())
    assert state["owner_uid"] == 65534
    command(qfs.qubits / "tasks" / "theirs" / "ctl", "release")  # root may release any task


def test_commands_that_could_not_be_served_are_einval(qfs):
    """Numbers that would overflow later, reals that are not finite and names that are
    Qiskit's own are refused at the command: EINVAL with a reason, never EIO, nothing kept."""
    from tests.conftest import BELL

    qfs.write_circuit("bell", BELL)
    command(qfs.qubits / "ctl", "alloc 2 task=p")
    physical = mapping(qfs, "p")
    task = qfs.qubits / "tasks" / "p"
    qubit = qfs.qubits / f"q{physical[0]}" / "ctl"
    refusals = [
        (qfs.qubits / "ctl", ["alloc \u00b2 task=x", "alloc " + "9" * 5000 + " task=x",
                              "alloc 2 task=x noise=nan"]),
        (task / "ctl", ["run bell seed=1" + "0" * 30, "run bell seed=-1",
                        "run bell shots=1_000", "set _loop_i_0=1", "set x=inf", "set x=nan",
                        "set x=1e999", "migrate device=eagle threshold=nan"]),
        (qubit, [f"on 1 do rx(inf) q{physical[1]}", "on 1 do set t=nan",
                 f"on 1 do x q{physical[1]} prio=" + "9" * 5000, "off \u00b2"]),
    ]
    for ctl, lines in refusals:
        for line in lines:
            assert refused(ctl, line) == errno.EINVAL, line
            assert ctl.read_text().startswith("error: EINVAL: "), line
    state = (task / "state.json").read_text()

    def strict(constant: str):
        raise AssertionError(f"{constant} in state.json")

    document = json.loads(state, parse_constant=strict)
    assert document["parameters"] == {} and document["triggers"] == 0
    assert os.listdir(qfs.qubits / "tasks") == ["p"]
    command(task / "ctl", f"run bell shots=10 noise=off seed={2**63 - 1}")
    assert (task / "ctl").read_text().startswith("ok: ran bell@v1")
