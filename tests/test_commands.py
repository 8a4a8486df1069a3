"""The control-file grammar (levels/ctl.py): every command form parses to its object, every
malformed line is refused with a reason that says what was expected; and, through the
mount, a malformed line on each kind of ctl is EINVAL with that reason in the ctl's reply
and in /.qfs/log."""

import errno
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from levels import ctl
from levels.ctl import (
    Alloc,
    Apply,
    Cancel,
    Checkpoint,
    GateAction,
    Measure,
    Migrate,
    Off,
    On,
    Release,
    Reset,
    Restore,
    Resume,
    Run,
    SetAction,
    StopAction,
)
from levels.errors import Invalid

DEVICE = [
    ("alloc 4 task=vqe", Alloc(4, "vqe")),
    ("alloc 4 task=vqe topology=linear noise=0.95 isolate=strict",
     Alloc(4, "vqe", "linear", 0.95, "strict")),
    ("  alloc 1 task=t  ", Alloc(1, "t")),
    ("release task=vqe", Release("vqe")),
]
QUBIT = [
    ("alloc task=t", Alloc(1, "t")),
    ("alloc task=t noise=0.5 isolate=spatial", Alloc(1, "t", "any", 0.5, "spatial")),
    ("release", Release()),
    ("on 1 do x q18", On(1, (GateAction("x", (18,)),))),
    ("on 0 do rz(0.5) q1; cz q1 q2 prio=3",
     On(0, (GateAction("rz", (1,), (0.5,)), GateAction("cz", (1, 2))), 3)),
    ("on 1 do u(1,2,-3) q4", On(1, (GateAction("u", (4,), (1.0, 2.0, -3.0)),))),
    ("on 1 do set theta=0.25; stop prio=-2",
     On(1, (SetAction("theta", 0.25), StopAction()), -2)),
    ("off 7", Off(7)),
    ("off all", Off(None)),
]
TASK = [
    ("run bell", Run("bell", None)),
    ("run bell@v2 shots=10 noise=off seed=5", Run("bell", 2, 10, False, 5)),
    ("run bell noise=on", Run("bell", None, 1024, True)),
    ("apply prep", Apply("prep", None)),
    ("apply prep@v3", Apply("prep", 3)),
    ("measure q2", Measure(2)),
    ("reset", Reset()),
    ("set theta=1.5", SetAction("theta", 1.5)),
    ("set theta = -2", SetAction("theta", -2.0)),
    ("release", Release()),
    ("checkpoint c1", Checkpoint("c1")),
    ("checkpoint c1 format=mps encrypt=0 retention=24h parent=c0",
     Checkpoint("c1", "mps", False, "24h", "c0")),
    ("restore c1", Restore("c1")),
    ("migrate device=lab", Migrate("lab")),
    ("migrate device=lab format=mps threshold=0.9", Migrate("lab", "mps", 0.9)),
]
WORKFLOW = [("resume", Resume()), ("cancel", Cancel()), (" cancel\n", Cancel())]


@pytest.mark.parametrize(("parse", "line", "expected"), [
    *((ctl.parse_device_command, line, obj) for line, obj in DEVICE),
    *((ctl.parse_qubit_command, line, obj) for line, obj in QUBIT),
    *((ctl.parse_task_command, line, obj) for line, obj in TASK),
    *((ctl.parse_workflow_command, line, obj) for line, obj in WORKFLOW),
])
def test_every_form_parses_to_its_object(parse, line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize(("parse", "line", "reason"), [
    (ctl.parse_device_command, "", "empty command"),
    (ctl.parse_device_command, "alloc 2 task=x\nalloc 3 task=y", "one command per write"),
    (ctl.parse_device_command, "alloc 'x", "cannot split command"),
    (ctl.parse_device_command, "alloc", "usage: alloc N task=NAME"),
    (ctl.parse_device_command, "alloc 0 task=x", "expected a qubit count 1..999999"),
    (ctl.parse_device_command, "alloc four task=x", "expected a qubit count"),
    (ctl.parse_device_command, "alloc 2", "alloc needs task=NAME"),
    (ctl.parse_device_command, "alloc 2 task=x colour=red", "unexpected 'colour=red'"),
    (ctl.parse_device_command, "alloc 2 task=x topology=moebius",
     "topology=moebius: expected one of any, linear"),
    (ctl.parse_device_command, "alloc 2 task=x isolate=maybe", "isolate=maybe: expected one of"),
    (ctl.parse_device_command, "alloc 2 task=x noise=2", "expected a score between 0 and 1"),
    (ctl.parse_device_command, "alloc 2 task=x noise=nan", "expected a finite number"),
    (ctl.parse_device_command, "alloc 2 task=x noise=high", "expected a number"),
    (ctl.parse_device_command, "release", "usage: release task=NAME"),
    (ctl.parse_device_command, "frobnicate", "unknown command 'frobnicate'; /qubits/ctl takes"),
    (ctl.parse_qubit_command, "alloc task=x topology=ring", "unexpected 'topology=ring'"),
    (ctl.parse_device_command, "alloc 2 task=z task=y", "task= given twice"),
    (ctl.parse_device_command, "release task=", "task= needs a value"),
    (ctl.parse_task_command, "checkpoint c format=", "format= needs a value"),
    (ctl.parse_task_command, "run bell shots=5 shots=7", "shots= given twice"),
    (ctl.parse_qubit_command, "release now", "usage: release"),
    (ctl.parse_qubit_command, "on 2 do x q1", "usage: on 0|1 do ACTION"),
    (ctl.parse_qubit_command, "on 1 do", "usage: on 0|1 do ACTION"),
    (ctl.parse_qubit_command, "on 1 do ;", "a trigger needs at least one action"),
    (ctl.parse_qubit_command, "on 1 do x q1 q1", "names a qubit twice"),
    (ctl.parse_qubit_command, "on 1 do x", "gate x needs qubits"),
    (ctl.parse_qubit_command, "on 1 do X q1", "bad gate 'X'"),
    (ctl.parse_qubit_command, "on 1 do x 1", "expected a qubit like q17, got '1'"),
    (ctl.parse_qubit_command, "on 1 do rx(inf) q1", "expected a finite number"),
    (ctl.parse_qubit_command, "on 1 do set _t=1", "expected NAME=VALUE"),
    (ctl.parse_qubit_command, "off", "usage: off ID | off all"),
    (ctl.parse_qubit_command, "off \u00b2", "usage: off ID | off all"),
    (ctl.parse_qubit_command, "measure q1", "a qubit's ctl takes: alloc, release, on, off"),
    (ctl.parse_task_command, "run", "usage: run CIRCUIT"),
    (ctl.parse_task_command, "run .bell", "expected CIRCUIT or CIRCUIT@vN"),
    (ctl.parse_task_command, "run bell shots=0", "shots=0: expected 1..10000000"),
    (ctl.parse_task_command, "run bell shots=1_000", "expected an integer"),
    (ctl.parse_task_command, "run bell seed=-1", "seed=-1: expected 0.."),
    (ctl.parse_task_command, "run bell noise=maybe", "noise='maybe': expected on|off"),
    (ctl.parse_task_command, "apply", "usage: apply CIRCUIT"),
    (ctl.parse_task_command, "measure", "usage: measure qK"),
    (ctl.parse_task_command, "measure 3", "expected a qubit like q17"),
    (ctl.parse_task_command, "reset now", "a task's ctl takes: run, apply"),
    (ctl.parse_task_command, "set x", "expected NAME=VALUE"),
    (ctl.parse_task_command, "set x=1e999", "expected a finite number"),
    (ctl.parse_task_command, "checkpoint", "usage: checkpoint NAME"),
    (ctl.parse_task_command, "checkpoint c encrypt=maybe", "expected on|off"),
    (ctl.parse_task_command, "restore", "usage: restore CHECKPOINT"),
    (ctl.parse_task_command, "migrate", "usage: migrate device=NAME"),
    (ctl.parse_task_command, "migrate device=lab threshold=2", "expected a fidelity 0..1"),
    (ctl.parse_task_command, "release now", "a task's ctl takes"),
    (ctl.parse_workflow_command, "", "empty command"),
    (ctl.parse_workflow_command, "resume now", "a workflow's ctl takes: resume, cancel"),
    (ctl.parse_workflow_command, "stop", "unknown command 'stop'"),
])
def test_malformed_lines_are_refused_with_their_reason(parse, line, reason):
    with pytest.raises(Invalid) as caught:
        parse(line)
    assert reason in str(caught.value)


@pytest.mark.fuse
def test_a_malformed_line_on_every_ctl_is_einval_with_its_reason_logged(qfs):
    from tests.conftest import GHZ3
    from tests.test_coordinator import wait_status, write_workflow
    from tests.test_qubits import command, refused

    qfs.write_circuit("ghz", GHZ3)
    command(qfs.qubits / "ctl", "alloc 2 task=p")
    write_workflow(qfs, "w", "stages:\n  - circuit: ghz\n")
    wait_status(qfs, "w", ("done", "failed"))
    cases = [
        (qfs.qubits / "ctl", "alloc 2 task=x topology=moebius", "topology=moebius"),
        (qfs.qubits / "q0" / "ctl", "on 2 do x q1", "usage: on 0|1 do ACTION"),
        (qfs.qubits / "tasks" / "p" / "ctl", "measure 3", "expected a qubit like q17"),
        (qfs.root / "workflows" / "w" / "ctl", "stop", "a workflow's ctl takes: resume, cancel"),
    ]
    for path, line, reason in cases:
        assert refused(path, line) == errno.EINVAL, line
        assert path.read_text().startswith("error: EINVAL: ") and reason in path.read_text()
        where = "/" + str(path.relative_to(qfs.root))
        assert f"write {where}: " in (qfs.root / ".qfs" / "log").read_text()
        assert reason in (qfs.root / ".qfs" / "log").read_text()


@pytest.mark.fuse
def test_a_command_refused_with_enoent_is_logged_too(qfs):
    """A lookup's ENOENT is routine and unlogged; a command's (`run nowhere`) is not."""
    from tests.test_qubits import command, refused

    command(qfs.qubits / "ctl", "alloc 2 task=t")
    assert refused(qfs.qubits / "tasks" / "t" / "ctl", "run nowhere") == errno.ENOENT
    assert refused(qfs.qubits / "ctl", "release task=nosuch") == errno.ENOENT
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "write /qubits/tasks/t/ctl: no circuit nowhere" in log, log[-500:]
    assert "write /qubits/ctl: " in log and "nosuch" in log


@pytest.mark.fuse
def test_a_write_too_long_for_one_command_runs_none_and_logs_a_bounded_line(qfs):
    """The kernel passes a write() over 1 MiB in pieces; none is taken for a command, and
    what /.qfs/log keeps of a refusal is bounded, whatever was written."""
    import os

    from tests.test_qubits import command

    command(qfs.qubits / "ctl", "alloc 1 task=p1")
    line = b"alloc 1 task=p2" + b" " * (1 << 20) + b"release task=p1"
    fd = os.open(qfs.qubits / "ctl", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as caught:
            os.write(fd, line)
        assert caught.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            os.write(fd, b"z" * 4000)  # within the bound: refused as a command, quoted
    finally:
        os.close(fd)
    assert sorted(os.listdir(qfs.qubits / "tasks")) == ["p1"]
    log = (qfs.root / ".qfs" / "log").read_text().splitlines()
    assert "a command is at most 4096 characters" in log[-2]
    assert max(map(len, log)) < 1200 and "more characters)" in log[-1]


@given(st.text(alphabet="ab =.,;\t\x0b\x0c\u00a0#$&|()<>x1-\"'\\", min_size=1, max_size=24))
@settings(max_examples=400, deadline=None)
def test_a_line_splits_into_the_words_shlex_gives(line):
    """Lines without quotes or backslashes skip shlex; the words are the same."""
    text = line.strip()
    if not text or "\n" in text:
        return
    try:
        expected = shlex.split(text)
    except ValueError:
        with pytest.raises(Invalid):
            ctl._words(line)
        return
    assert ctl._words(line) == expected
