"""Running circuits on the simulated device, live state, and feed-forward, through the mount.

Counts are checked against exact probabilities with a chi-square test (p > 1e-3)."""

import errno
import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from scipy.stats import chisquare

from tests.conftest import BELL
from tests.test_qubits import command, mapping, refused

pytestmark = pytest.mark.fuse

PSI = (1.1, 0.7)  # the teleported state: rz(0.7) ry(1.1) |0>
TELEPORT = f"""OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[3] c;
ry({PSI[0]}) q[0];
rz({PSI[1]}) q[0];
h q[1];
cx q[1], q[2];
cx q[0], q[1];
h q[0];
c[0] = measure q[0];
c[1] = measure q[1];
rz({-PSI[1]}) q[2];
ry({-PSI[0]}) q[2];
c[2] = measure q[2];
"""
PREP = TELEPORT.split("c[0] = measure")[0].replace("bit[3] c;\n", "")
UNDO = f"""OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
rz({-PSI[1]}) q[2];
ry({-PSI[0]}) q[2];
"""


def fit(counts: dict[str, int], expected: dict[str, float]) -> float:
    """Chi-square p-value of counts against exact probabilities (no count outside them)."""
    assert set(counts) <= set(expected), counts
    keys = sorted(expected)
    shots = sum(counts.values())
    return chisquare([counts.get(k, 0) for k in keys],
                     [expected[k] * shots for k in keys]).pvalue


def last_result(qfs, circuit: str) -> dict:
    """The newest run of a circuit (run names end in the mount's run counter)."""
    results = [n for n in os.listdir(qfs.circuits / circuit / "results") if n.endswith(".json")]
    newest = max(results, key=lambda n: int(n.removesuffix(".json").rsplit("-", 1)[1]))
    return json.loads((qfs.circuits / circuit / "results" / newest).read_text())


def test_run_writes_counts_that_fit_the_exact_distribution(qfs):
    qfs.write_circuit("bell")
    command(qfs.qubits / "ctl", "alloc 2 task=b topology=linear")
    ctl = qfs.qubits / "tasks" / "b" / "ctl"
    command(ctl, "run bell shots=4000 noise=off seed=5")
    assert ctl.read_text().startswith("ok: ran bell@v1: results/")
    result = last_result(qfs, "bell")
    assert result["physical_qubits"] == mapping(qfs, "b") and result["shots"] == 4000
    assert fit(result["counts"], {"00": 0.5, "11": 0.5}) > 1e-3
    assert json.loads((qfs.qubits / "tasks" / "b" / "result.json").read_text()) == result


def test_noisy_run_uses_the_device_noise(qfs):
    qfs.write_circuit("bell")
    command(qfs.qubits / "ctl", "alloc 2 task=n topology=linear")
    command(qfs.qubits / "tasks" / "n" / "ctl", "run bell shots=4000 seed=9")
    counts = last_result(qfs, "bell")["counts"]
    errors = counts.get("01", 0) + counts.get("10", 0)
    assert 0 < errors < 0.15 * 4000, counts


def test_run_errors_leave_no_result(qfs):
    qfs.write_circuit("bell")
    qfs.write_circuit("ghz", BELL.replace("q[2]", "q[5]").replace("c[2]", "c[5]"))
    command(qfs.qubits / "ctl", "alloc 2 task=e")
    ctl = qfs.qubits / "tasks" / "e" / "ctl"
    assert refused(ctl, "run nothing") == errno.ENOENT
    assert refused(ctl, "run ghz") == errno.EINVAL
    assert "needs 5 qubits" in ctl.read_text()
    assert refused(ctl, "run bell shots=lots") == errno.EINVAL
    assert refused(ctl, "run bell@v7") == errno.ENOENT
    qfs.write_circuit("silent", BELL.split("measure")[0])
    assert refused(ctl, "run silent") == errno.EINVAL
    assert "measures nothing" in ctl.read_text()
    assert os.listdir(qfs.circuits / "bell" / "results") == []
    assert os.listdir(qfs.circuits / "silent" / "results") == []


def _teleport_task(qfs) -> list[int]:
    qfs.write_circuit("teleport", TELEPORT)
    command(qfs.qubits / "ctl", "alloc 3 task=tp topology=linear")
    return mapping(qfs, "tp")


def _register_corrections(qfs, physical: list[int]) -> None:
    p0, p1, p2 = physical
    command(qfs.qubits / f"q{p1}" / "ctl", f"on 1 do x q{p2}")
    command(qfs.qubits / f"q{p0}" / "ctl", f"on 1 do z q{p2} prio=1")


def test_teleportation_as_a_dynamic_circuit(qfs):
    physical = _teleport_task(qfs)
    ctl = qfs.qubits / "tasks" / "tp" / "ctl"
    command(ctl, "run teleport shots=2000 noise=off seed=3")
    without = last_result(qfs, "teleport")["counts"]
    assert sum(n for k, n in without.items() if k[0] == "1") > 100  # c2 random without them
    _register_corrections(qfs, physical)
    triggers = (qfs.qubits / "tasks" / "tp" / "triggers").read_text().splitlines()
    assert triggers == [f"1 q{physical[1]} on 1 do x q{physical[2]} prio=0",
                        f"2 q{physical[0]} on 1 do z q{physical[2]} prio=1"]
    command(ctl, "run teleport shots=4000 noise=off seed=4")
    counts = last_result(qfs, "teleport")["counts"]
    # With the corrections q2 is |psi>; undoing the preparation always gives c2 = 0,
    # and c1 c0 are uniform.
    assert fit(counts, {"000": 0.25, "001": 0.25, "010": 0.25, "011": 0.25}) > 1e-3


def test_teleportation_live(qfs):
    physical = _teleport_task(qfs)
    qfs.write_circuit("prep", PREP)
    qfs.write_circuit("undo", UNDO)
    _register_corrections(qfs, physical)
    ctl = qfs.qubits / "tasks" / "tp" / "ctl"
    outcomes = set()
    for _ in range(12):
        command(ctl, "reset")
        command(ctl, "apply prep")
        command(ctl, "measure q0")
        m0 = ctl.read_text()
        command(ctl, "measure q1")
        m1 = ctl.read_text()
        outcomes.add((m0[4:8], m1[4:8]))
        command(ctl, "apply undo")
        command(ctl, "measure q2")
        assert ctl.read_text() == "ok: q2=0\n", (m0, m1)
    assert len(outcomes) > 1  # the corrections were exercised on more than one branch
    state = json.loads((qfs.qubits / "tasks" / "tp" / "state.json").read_text())
    fired = [m for m in state["live"]["measurements"] if m["triggers"]]
    assert fired and all(0 < m["latency_ns"] < 50_000_000 for m in fired)
    metrics = (qfs.root / ".qfs" / "metrics").read_text()
    count = next(line for line in metrics.splitlines()
                 if line.startswith("qfs_feedforward_latency_seconds_count"))
    assert float(count.split()[-1]) >= 24


def test_parameter_update_and_early_stop(qfs):
    adaptive = """OPENQASM 3.0;
include "stdgates.inc";
input float[64] theta;
qubit[3] q;
bit[3] c;
x q[0];
c[0] = measure q[0];
rx(theta) q[1];
c[1] = measure q[1];
x q[2];
c[2] = measure q[2];
"""
    qfs.write_circuit("adaptive", adaptive)
    command(qfs.qubits / "ctl", "alloc 3 task=ad topology=linear")
    p0 = mapping(qfs, "ad")[0]
    ctl = qfs.qubits / "tasks" / "ad" / "ctl"
    assert refused(ctl, "run adaptive noise=off") == errno.EINVAL  # theta has no value
    command(ctl, "set theta=0")
    command(ctl, "run adaptive shots=200 noise=off")
    assert last_result(qfs, "adaptive")["counts"] == {"101": 200}
    command(qfs.qubits / f"q{p0}" / "ctl", f"on 1 do set theta={math.pi}")
    command(ctl, "run adaptive shots=200 noise=off")
    assert last_result(qfs, "adaptive")["counts"] == {"111": 200}
    command(qfs.qubits / f"q{p0}" / "ctl", "off all")
    command(qfs.qubits / f"q{p0}" / "ctl", "on 1 do stop")
    command(ctl, "run adaptive shots=200 noise=off")
    assert last_result(qfs, "adaptive")["counts"] == {"001": 200}
    assert refused(qfs.qubits / f"q{p0}" / "ctl", "off 99") == errno.ENOENT
    assert refused(qfs.qubits / f"q{p0}" / "ctl", "on 2 do x q1") == errno.EINVAL
    assert refused(qfs.qubits / f"q{p0}" / "ctl", "on 1 do x q126") == errno.EINVAL
    assert refused(qfs.qubits / f"q{p0}" / "ctl", "on 1 do warp q" + str(p0)) == errno.EINVAL
    assert len((qfs.qubits / "tasks" / "ad" / "triggers").read_text().splitlines()) == 1


def test_a_trigger_set_lasts_one_shot_on_both_paths(qfs):
    """A `set` fired live holds until reset and leaves the task's own value alone, as a set
    in the compiled circuit lasts one shot."""
    header = 'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\nqubit[3] q;\n'
    qfs.write_circuit("adaptive", header + "bit[3] c;\nx q[0];\nc[0] = measure q[0];\n"
                      "rx(theta) q[1];\nc[1] = measure q[1];\nx q[2];\nc[2] = measure q[2];\n")
    qfs.write_circuit("flip", header.replace("input float[64] theta;\n", "") + "x q[0];\n")
    qfs.write_circuit("rot", header + "rx(theta) q[1];\n")
    command(qfs.qubits / "ctl", "alloc 3 task=sh topology=linear")
    p0 = mapping(qfs, "sh")[0]
    task = qfs.qubits / "tasks" / "sh"
    command(task / "ctl", "set theta=0")
    command(qfs.qubits / f"q{p0}" / "ctl", f"on 1 do set theta={math.pi!r}")

    def p_one(qubit: int) -> float:
        probabilities = json.loads((task / "state.json").read_text())["live"][
            "top_probabilities"]
        return sum(p for bits, p in probabilities.items() if bits[::-1][qubit] == "1")

    command(task / "ctl", "apply flip")
    command(task / "ctl", "measure q0")
    command(task / "ctl", "apply rot")  # rx(pi) on q1 in this shot
    assert p_one(1) == pytest.approx(1, abs=1e-12)
    state = json.loads((task / "state.json").read_text())
    assert state["parameters"] == {"theta": 0.0}
    assert state["live"]["parameters"] == {"theta": math.pi}
    command(task / "ctl", "reset")
    command(task / "ctl", "apply rot")  # a new shot: theta is the task's 0 again
    assert p_one(1) == pytest.approx(0, abs=1e-12)
    command(task / "ctl", "run adaptive shots=200 noise=off")
    assert last_result(qfs, "adaptive")["counts"] == {"111": 200}
    command(qfs.qubits / f"q{p0}" / "ctl", "off all")
    command(task / "ctl", "run adaptive shots=200 noise=off")
    assert last_result(qfs, "adaptive")["counts"] == {"101": 200}


def test_feed_forward_cannot_exhaust_the_daemon(mount_factory):
    """`nobody` puts `set` triggers on every qubit of a 16-qubit task: where no later gate
    uses the parameter nothing is copied; where one does, the compiled circuit would double
    per measurement and the run is refused with the bound, in bounded time and memory."""
    base = Path(tempfile.mkdtemp(prefix="qfs-ff-"))
    base.chmod(0o755)
    qfs = mount_factory(base=base)

    def as_nobody(line: str, ctl: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "bash", "-c", f"echo '{line}' > {ctl}"],
                              capture_output=True, text=True)

    def peak_mb() -> float:
        """The largest resident size of the daemon or any process it started (workers)."""
        peaks, pending = [], [qfs.proc.pid]
        while pending:
            pid = pending.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                for thread in Path(f"/proc/{pid}/task").iterdir():
                    pending.extend(int(c) for c in (thread / "children").read_text().split())
            except FileNotFoundError:
                continue
            peaks.append(int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024)
        return max(peaks)

    n = 16
    header = f'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] phi;\nqubit[{n}] q;\n' \
             f"bit[{n}] c;\n"
    qfs.write_circuit("ghz", header + "h q[0];\n" + "".join(
        f"cx q[{i}], q[{i + 1}];\n" for i in range(n - 1)) + "c = measure q;\n")
    qfs.write_circuit("chain", header + "h q[0];\n" + "".join(
        f"c[{i}] = measure q[{i}];\nrx(phi) q[{i + 1}];\n" for i in range(n - 1))
        + f"c[{n - 1}] = measure q[{n - 1}];\n")
    assert as_nobody(f"alloc {n} task=ff", qfs.qubits / "ctl").returncode == 0
    ctl = qfs.qubits / "tasks" / "ff" / "ctl"
    for q in mapping(qfs, "ff"):
        for line in ("on 0 do set phi=1", "on 1 do set phi=2"):
            assert as_nobody(line, qfs.qubits / f"q{q}" / "ctl").returncode == 0
    assert as_nobody("set phi=0", ctl).returncode == 0
    started = time.monotonic()
    done = as_nobody("run ghz shots=100 noise=off", ctl)
    assert done.returncode == 0, done.stderr
    assert set(last_result(qfs, "ghz")["counts"]) == {"0" * n, "1" * n}
    done = as_nobody("run chain shots=100 noise=off", ctl)
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert "more than" in ctl.read_text() and "operations" in ctl.read_text()
    qfs.write_circuit("deep", header + "h q[0];\nc[0] = measure q[0];\n" * 70)
    p0 = mapping(qfs, "ff")[0]
    assert as_nobody("off all", qfs.qubits / f"q{p0}" / "ctl").returncode == 0
    assert as_nobody("on 1 do stop", qfs.qubits / f"q{p0}" / "ctl").returncode == 0
    done = as_nobody("run deep shots=100 noise=off", ctl)
    assert done.returncode != 0 and "nest more than 64 branches" in ctl.read_text()
    assert time.monotonic() - started < 30
    assert peak_mb() < 600
    assert "results" not in os.listdir(qfs.circuits / "chain") or \
        os.listdir(qfs.circuits / "chain" / "results") == []


def test_a_trigger_may_act_on_a_task_qubit_the_circuit_leaves_idle(qfs):
    """bell on a 3-qubit task; q0=1 flips q1 through the idle q2 before q1 is measured."""
    qfs.write_circuit("bell")
    qfs.write_circuit("pair", BELL.replace("measure q -> c;\n", ""))
    command(qfs.qubits / "ctl", "alloc 3 task=idle topology=linear")
    p0, p1, p2 = mapping(qfs, "idle")
    command(qfs.qubits / f"q{p0}" / "ctl", f"on 1 do x q{p2}; cx q{p2} q{p1}")
    ctl = qfs.qubits / "tasks" / "idle" / "ctl"
    command(ctl, "run bell shots=4000 noise=off seed=2")
    assert ctl.read_text().startswith("ok: ran bell@v1")
    result = last_result(qfs, "bell")
    assert result["physical_qubits"] == [p0, p1, p2]
    assert fit(result["counts"], {"00": 0.5, "01": 0.5}) > 1e-3
    seen = set()
    for _ in range(8):
        command(ctl, "reset")
        command(ctl, "apply pair")
        command(ctl, "measure q0")
        outcome = ctl.read_text()[7]
        seen.add(outcome)
        live = json.loads((qfs.qubits / "tasks" / "idle" / "state.json").read_text())["live"]
        assert live["top_probabilities"] == pytest.approx(
            {"101": 1.0} if outcome == "1" else {"000": 1.0}, abs=1e-12)
    assert seen == {"0", "1"}


def test_angles_keep_full_precision(qfs):
    qfs.write_circuit("bell")
    command(qfs.qubits / "ctl", "alloc 2 task=fp topology=linear")
    p0, p1 = mapping(qfs, "fp")
    angle = 0.1 + 0.2  # 0.30000000000000004: six digits would lose it
    command(qfs.qubits / f"q{p0}" / "ctl", f"on 1 do rx({angle!r}) q{p1}; set theta={math.pi!r}")
    ctl = qfs.qubits / "tasks" / "fp" / "ctl"
    command(ctl, f"set phi={math.e!r}")
    assert ctl.read_text() == f"ok: set phi={math.e!r}\n"
    line = f"1 q{p0} on 1 do rx({angle!r}) q{p1}; set theta={math.pi!r} prio=0"
    assert (qfs.qubits / "tasks" / "fp" / "triggers").read_text() == line + "\n"
    command(ctl, "run bell shots=10 noise=off")
    result = last_result(qfs, "bell")
    assert result["triggers"] == [line] and result["parameters"] == {"phi": math.e}
