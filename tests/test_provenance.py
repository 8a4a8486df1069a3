"""Checkpoint provenance and lineage through the mount: what produced a state, the parent
chain of incremental checkpoints, /states/<ckpt>/lineage, and pinned checkpoints that
survive retention."""

import importlib.metadata
import json
import os
import time

import numpy as np
import pytest

from tests.test_qubits import command, mapping
from tests.test_states import meta_of, stored_checkpoints, wait_until_deleted

pytestmark = pytest.mark.fuse

UNITARY = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\nh q[0];\ncx q[0],q[1];\n"


def test_checkpoints_say_what_made_them_and_list_their_lineage(qfs):
    qfs.write_circuit("pair", UNITARY)
    (qfs.circuits / "pair" / "latest.qasm").write_text(UNITARY + "rz(0.3) q[1];\n")
    ctl = qfs.qubits / "tasks" / "t" / "ctl"
    command(qfs.qubits / "ctl", "alloc 2 task=t topology=linear")
    command(ctl, "apply pair@v1")
    command(ctl, "apply pair")
    command(ctl, "checkpoint full format=statevector")
    command(ctl, "measure q0")
    command(ctl, "checkpoint step1 parent=full format=statevector")
    command(ctl, "checkpoint step2 parent=step1 format=statevector")

    state = json.loads((qfs.qubits / "tasks" / "t" / "state.json").read_text())
    outcome = state["live"]["measurements"][-1]["outcome"]
    meta = meta_of(qfs, "step2")
    provenance = meta["provenance"]
    assert provenance["task"] == "t" and provenance["device"] == state["device"]
    assert provenance["physical_qubits"] == mapping(qfs, "t")
    assert provenance["produced_by"] == [{"apply": "pair@v1"}, {"apply": "pair@v2"},
                                         {"measure": "q0", "outcome": outcome}]
    assert isinstance(provenance["measurement_seed"], int)
    assert provenance["qiskit"] == importlib.metadata.version("qiskit")
    assert provenance["qiskit_aer"] == importlib.metadata.version("qiskit-aer")
    assert meta["parent_chain"] == ["step1", "full"] and meta["pinned"] is False
    assert meta_of(qfs, "full")["parent_chain"] == []

    lines = [line.split("\t") for line in
             (qfs.root / "states" / "step2" / "lineage").read_text().splitlines()]
    assert [line[:3] for line in lines] == [["step2", "statevector", "incremental"],
                                            ["step1", "statevector", "incremental"],
                                            ["full", "statevector", "full"]]
    assert lines[2][3] == meta_of(qfs, "full")["created"]

    # A restore starts a new history; an imported state says it was imported.
    command(ctl, "restore full")
    command(ctl, "checkpoint again format=statevector")
    assert meta_of(qfs, "again")["provenance"]["produced_by"] == [{"restore": "full"}]
    os.mkdir(qfs.root / "states" / "imp")
    np.save(qfs.root / "states" / "imp" / "statevector.npy",
            np.array([1, 0, 0, 0], dtype=complex))
    imported = meta_of(qfs, "imp")["provenance"]
    assert "import" in imported and "task" not in imported
    assert (qfs.root / "states" / "imp" / "lineage").read_text().startswith("imp\t")


def test_a_pinned_checkpoint_survives_retention(qfs):
    command(qfs.qubits / "ctl", "alloc 1 task=p")
    ctl = qfs.qubits / "tasks" / "p" / "ctl"
    command(ctl, "checkpoint kept retention=1s")
    command(ctl, "checkpoint brief retention=1s")
    os.setxattr(qfs.root / "states" / "kept", "user.qfs.pinned", b"1")
    assert os.getxattr(qfs.root / "states" / "kept", "user.qfs.pinned") == b"1"
    time.sleep(1.2)
    wait_until_deleted(qfs.data, "brief")
    assert stored_checkpoints(qfs.data) == {"kept"}
    assert meta_of(qfs, "kept")["pinned"] is True
    assert os.listdir(qfs.root / "states") == ["kept"]
    os.removexattr(qfs.root / "states" / "kept", "user.qfs.pinned")
    wait_until_deleted(qfs.data, "kept")  # unpinned, its retention is long past
