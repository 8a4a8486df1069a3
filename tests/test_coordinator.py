"""The coordinator through the mount: workflows with checkpoints, resume after a failure
and after kill -9 of the daemon, and migration between devices under a fidelity threshold."""

import errno
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import BELL, GHZ3
from tests.test_qubits import command, mapping, refused
from tests.test_states import ENTANGLED, meta_of

pytestmark = pytest.mark.fuse

WORKFLOW = """qubits: 3
topology: linear
stages:
  - name: entangle
    circuit: ghz
    shots: 500
    checkpoint: true
  - name: rotate
    circuit: rot
    qubits: 3
    shots: 400
    delay: {delay}
  - name: again
    circuit: ghz
    shots: 300
    checkpoint: true
"""
ROTATE = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
ry(0.7) q[0];
rz(0.4) q[1];
"""


def write_workflow(qfs, name: str, text: str) -> None:
    with open(qfs.root / "workflows" / f"{name}.yaml", "w") as f:
        f.write(text)


def wait_status(qfs, name: str, wanted: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = (qfs.root / "workflows" / name / "status").read_text()
        if status.split("\n")[0].split(":")[0] in wanted:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def results(qfs, name: str) -> dict:
    return json.loads((qfs.root / "workflows" / name / "result.json").read_text())


def setup_circuits(qfs) -> None:
    qfs.write_circuit("ghz", GHZ3)
    qfs.write_circuit("rot", ROTATE)


def test_workflow_runs_stage_by_stage_with_checkpoints(qfs):
    setup_circuits(qfs)
    write_workflow(qfs, "w", WORKFLOW.format(delay=0))
    status = wait_status(qfs, "w", ("done", "failed"))
    assert status == "done\nentangle done\nrotate done\nagain done\n"
    result = results(qfs, "w")
    assert set(result["stages"]["entangle"]["counts"]) == {"000", "111"}
    assert sum(result["stages"]["rotate"]["counts"].values()) == 400
    assert result["stages"]["again"]["checkpoint"] == "w-again"
    assert meta_of(qfs, "w-entangle")["fidelity"] > 1 - 1e-12
    assert meta_of(qfs, "w-again")["provenance"]["produced_by"] == [
        {"apply": "ghz@v1"}, {"apply": "rot@v1"}, {"apply": "ghz@v1"}]
    assert sorted(os.listdir(qfs.root / "workflows")) == ["w", "w.yaml"]
    assert "stages:" in (qfs.root / "workflows" / "w.yaml").read_text()
    assert os.listdir(qfs.qubits / "tasks") == []  # released when done


def test_a_stage_never_replaces_a_checkpoint_it_did_not_make(qfs):
    """A stage's checkpoint is <workflow>-<stage>: workflow p-q's stage r names the one
    workflow p's stage q-r made. The stage fails with the reason; the other stays."""
    setup_circuits(qfs)
    one_stage = "qubits: 3\nstages:\n  - {{name: {stage}, circuit: {circuit}, checkpoint: true}}\n"
    write_workflow(qfs, "p", one_stage.format(stage="q-r", circuit="ghz"))
    assert wait_status(qfs, "p", ("done", "failed")).startswith("done")
    write_workflow(qfs, "p-q", one_stage.format(stage="r", circuit="rot"))
    status = wait_status(qfs, "p-q", ("done", "failed"))
    assert status.startswith("failed: checkpoint p-q-r exists, made by wf-p"), status
    assert meta_of(qfs, "p-q-r")["provenance"]["task"] == "wf-p"
    write_workflow(qfs, "p", one_stage.format(stage="q-r", circuit="rot"))  # its own: again
    assert wait_status(qfs, "p", ("done", "failed")).startswith("done")


@pytest.mark.parametrize(("text", "code"), [
    ("stages: 3\n", errno.EINVAL),
    ("stages:\n  - circuit: ghz\n    shots: many\n", errno.EINVAL),
    ("stages:\n  - circuit: ghz\n    colour: red\n", errno.EINVAL),
    ("stages: [\n", errno.EINVAL),
    ("stages:\n  - circuit: nowhere\n", errno.ENOENT),
])
def test_bad_workflows_are_refused_at_close(qfs, text, code):
    setup_circuits(qfs)
    f = open(qfs.root / "workflows" / "bad.yaml", "w")
    f.write(text)
    with pytest.raises(OSError) as caught:
        f.close()
    assert caught.value.errno == code
    assert "bad" not in os.listdir(qfs.root / "workflows")
    assert "workflow bad" in (qfs.root / ".qfs" / "log").read_text() or code == errno.ENOENT


def test_resume_after_a_failed_stage_matches_an_uninterrupted_run(qfs):
    setup_circuits(qfs)
    write_workflow(qfs, "w", WORKFLOW.format(delay=1.5))
    wait_status(qfs, "w", ("running",))
    time.sleep(0.3)
    subprocess.run(["rm", "-r", str(qfs.circuits / "rot")], check=True)
    status = wait_status(qfs, "w", ("failed", "done"))
    assert status.startswith("failed: no circuit rot"), status
    qfs.write_circuit("rot", ROTATE)
    command(qfs.root / "workflows" / "w" / "ctl", "resume")
    wait_status(qfs, "w", ("done",))
    resumed = results(qfs, "w")["stages"]
    write_workflow(qfs, "w", WORKFLOW.format(delay=0))  # the same workflow, from scratch
    wait_status(qfs, "w", ("done",))
    assert results(qfs, "w")["stages"] == resumed
    assert refused(qfs.root / "workflows" / "w" / "ctl", "resume") == errno.EINVAL


def test_kill_9_mid_workflow_then_resume(mount_factory):
    qfs = mount_factory()
    setup_circuits(qfs)
    write_workflow(qfs, "w", WORKFLOW.format(delay=3))
    wait_status(qfs, "w", ("running",))
    deadline = time.monotonic() + 30
    while "entangle done" not in (qfs.root / "workflows" / "w" / "status").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    qfs.proc.kill()
    qfs.proc.wait()
    qfs.proc = None
    subprocess.run(["fusermount3", "-u", "-z", str(qfs.root)], check=False)
    second = mount_factory(data=qfs.data)
    status = (second.root / "workflows" / "w" / "status").read_text()
    assert status.startswith("interrupted"), status
    command(second.root / "workflows" / "w" / "ctl", "resume")
    wait_status(second, "w", ("done",))
    resumed = results(second, "w")["stages"]
    write_workflow(second, "w", WORKFLOW.format(delay=0))
    wait_status(second, "w", ("done",))
    assert results(second, "w")["stages"] == resumed


DEVICES = """live_qubit_mgr:
  devices:
    - {name: eagle, qubits: 127, topology: heavy_hex}
    - {name: lab, qubits: 8, topology: all_to_all, seed: 11}
state_store:
  mps_max_bond: 1
"""


def test_migration_moves_the_state_or_leaves_it_untouched(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text(DEVICES)
    qfs = mount_factory(extra=["--config", str(config)])
    qfs.write_circuit("prep", ENTANGLED)
    command(qfs.qubits / "ctl", "alloc 4 task=m topology=linear")
    ctl = qfs.qubits / "tasks" / "m" / "ctl"
    command(ctl, "apply prep")
    command(ctl, "checkpoint before format=statevector")
    before = mapping(qfs, "m")
    # A lossy serialization (MPS of bond 1) cannot keep fidelity 0.95: refused, untouched.
    assert refused(ctl, "migrate device=lab format=mps") == errno.EINVAL
    assert "threshold 0.95" in ctl.read_text()
    assert mapping(qfs, "m") == before
    command(ctl, "migrate device=lab")
    lab = qfs.root / "devices" / "lab"
    assert os.listdir(lab / "tasks") == ["m"] and os.listdir(qfs.qubits / "tasks") == []
    assert json.loads((lab / "tasks" / "m" / "state.json").read_text())["device"] == "lab"
    command(lab / "tasks" / "m" / "ctl", "checkpoint after format=statevector")
    import numpy as np

    a = np.load(qfs.root / "states" / "before" / "statevector.npy")
    b = np.load(qfs.root / "states" / "after" / "statevector.npy")
    assert abs(np.vdot(a, b)) ** 2 > 1 - 1e-12
    metrics = (qfs.root / ".qfs" / "metrics").read_text()
    assert "qfs_migration_success_rate 0.5" in metrics
    assert refused(lab / "tasks" / "m" / "ctl", "migrate device=nowhere") == errno.ENOENT
    assert BELL  # the shared fixtures stay importable


def test_only_the_owner_may_migrate_and_nothing_is_done_first(mount_factory):
    """Another user's migrate is EACCES before any work: not EINVAL or ENOENT for a device
    they name, no serialization of the owner's state, no metric moved."""
    base = Path(tempfile.mkdtemp(prefix="qfs-perm-"))
    base.chmod(0o755)
    config = base / "qfs.yaml"
    config.write_text(DEVICES)
    qfs = mount_factory(base=base, extra=["--config", str(config)])
    qfs.write_circuit("prep", ENTANGLED)
    command(qfs.qubits / "ctl", "alloc 4 task=m topology=linear")
    ctl = qfs.qubits / "tasks" / "m" / "ctl"
    command(ctl, "apply prep")
    before = (qfs.qubits / "tasks" / "m" / "state.json").read_text()
    for line in ("migrate device=lab", "migrate device=nowhere", "migrate device=eagle",
                 "migrate device=lab format=mps"):
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
             f"echo '{line}' > {ctl}"], capture_output=True, text=True)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (line, done)
        assert "belongs to uid 0, not 65534" in ctl.read_text()
    metrics = (qfs.root / ".qfs" / "metrics").read_text()
    assert "qfs_migration_fidelity_count 0.0" in metrics
    assert (qfs.qubits / "tasks" / "m" / "state.json").read_text() == before
    command(ctl, "migrate device=lab")  # the owner may
    assert os.listdir(qfs.root / "devices" / "lab" / "tasks") == ["m"]
