"""Consistency across levels: qfsmount --check [--repair], /.qfs/health and /.qfs/config."""

import errno
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from qiskit import qasm3
from qiskit.quantum_info import Statevector, state_fidelity

from levels.store.meta import LmdbMetaStore
from tests.conftest import QFSMOUNT
from tests.test_qubits import command
from tests.test_states import ENTANGLED, prepared_task, stored_checkpoints, wait_until_deleted

pytestmark = pytest.mark.fuse


def run_check(data, *extra) -> tuple[int, list[dict]]:
    done = subprocess.run([*QFSMOUNT, "--check", "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=120)
    findings = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, findings


@pytest.mark.damages_data
def test_check_finds_and_repairs_cross_level_damage(mount_factory):
    qfs = mount_factory()
    prepared_task(qfs, "t")
    ctl = qfs.qubits / "tasks" / "t" / "ctl"
    command(ctl, "checkpoint base format=statevector")
    command(ctl, "checkpoint child format=statevector parent=base")
    command(ctl, "checkpoint other format=statevector")
    base_blob = (qfs.root / "states" / "base" / "blob").read_bytes()
    health = json.loads((qfs.root / ".qfs" / "health").read_text())
    assert health["status"] == "healthy", health
    qfs.stop()
    assert run_check(qfs.data) == (0, [])
    blobs = list((qfs.data / "blobs").glob("??/*"))
    next(p for p in blobs if p.read_bytes() == base_blob).unlink()
    orphan = qfs.data / "blobs" / "ff" / ("ff" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash between blob and metadata")
    meta = LmdbMetaStore(qfs.data / "meta.lmdb", 1024)
    with meta.writing() as txn:
        record = json.loads(txn.get("tasks", b"t"))
        record.update(name="ghost", qubits=[500])
        txn.put("tasks", b"ghost", json.dumps(record).encode())
    meta.close()
    code, findings = run_check(qfs.data)
    assert code == 1
    found = {(f["kind"], f["subject"]) for f in findings}
    assert found == {("orphan_blob", "ff" * 32), ("broken_checkpoint", "base"),
                     ("broken_checkpoint", "child"), ("bad_task", "ghost")}, found
    code, findings = run_check(qfs.data, "--repair")
    assert code == 0 and all(f["repaired"] for f in findings)
    assert run_check(qfs.data) == (0, [])
    second = mount_factory(data=qfs.data)
    assert sorted(p.name for p in (second.root / "states").iterdir()) == ["other"]
    assert [p.name for p in (second.qubits / "tasks").iterdir()] == ["t"]
    assert json.loads((second.root / ".qfs" / "health").read_text())["status"] == "healthy"


@pytest.mark.damages_data
def test_check_of_a_full_data_directory_reports_rather_than_stops(mount_factory, tmp_path):
    """The search index to be rebuilt on a full disk: the check reports it unavailable
    (one JSON line), where it stopped on the index's Busy with a traceback."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        qfs = mount_factory(data=disk / "data")
        qfs.write_circuit("kept")
        qfs.stop()
        shutil.rmtree(disk / "data" / "index")
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"],
                       capture_output=True, check=False)  # until ENOSPC
        code, findings = run_check(disk / "data")
        assert code == 1
        assert [(f["kind"], f["subject"]) for f in findings] == \
            [("index_unavailable", "search index")], findings
        assert "No space left on device" in findings[0]["detail"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.damages_data
def test_health_reports_damage_while_mounted(qfs):
    prepared_task(qfs, "h")
    command(qfs.qubits / "tasks" / "h" / "ctl", "checkpoint c format=statevector")
    stray = qfs.data / "blobs" / "ee" / ("ee" * 32)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"stray")
    health = json.loads((qfs.root / ".qfs" / "health").read_text())
    assert health["status"] == "degraded"
    assert health["components"]["state_store"]["status"] == "degraded"
    assert set(health["components"]) == {"lmdb", "search_index", "state_store", "key",
                                         "device_model", "aer"}


def test_config_shows_values_and_their_origin(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_versions_per_artifact: 4\n")
    qfs = mount_factory(extra=["--config", str(config)])
    shown = json.loads((qfs.root / ".qfs" / "config").read_text())
    versions = shown["circuit_fs"]["max_versions_per_artifact"]
    assert (versions["value"], versions["from"]) == (4, str(config))
    assert versions["controls"].startswith("Unpinned versions kept")
    threshold = shown["cross_level"]["migration_fidelity_threshold"]
    assert (threshold["value"], threshold["from"]) == (0.95, "default")
    done = subprocess.run([*QFSMOUNT, "--check"], capture_output=True, text=True,
                          env={"XDG_DATA_HOME": str(tmp_path / "none"), "PATH": "/usr/bin"})
    assert done.returncode == 2 and "holds no qfs data" in done.stderr


def test_metrics_and_tuning_report(qfs):
    bell = qfs.write_circuit("bell")
    for _ in range(3):
        (bell / "v1.txt").read_text()
    os_listdir = [p.name for p in (qfs.root / "search" / "bell").iterdir()]
    assert os_listdir == ["bell"]
    metrics = (qfs.root / ".qfs" / "metrics").read_text()
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    assert values["qfs_artifact_store_seconds_count"] >= 1
    assert values["qfs_search_latency_seconds_count"] >= 1
    assert 0 < values["qfs_cache_hit_rate"] <= 1
    for name in ("qfs_qubit_allocation_seconds_bucket{le=\"0.001\"}",
                 "qfs_feedforward_latency_seconds_bucket{le=\"0.0001\"}",
                 "qfs_state_serialization_seconds_bucket{le=\"0.01\"}"):
        assert name in values, name
    tuning = json.loads((qfs.root / ".qfs" / "tuning").read_text())
    named = {b["bottleneck"] for b in tuning["bottlenecks"]}
    average = tuning["measured"]["artifact_store_seconds_average"]
    assert average > 0
    assert ("SlowArtifactStorage" in named) == (average > 0.1)  # the reference's threshold
    assert "LowCacheEfficiency" not in named


def test_profiles_and_metrics_endpoint(mount_factory, tmp_path):
    import socket
    import urllib.request

    from tests.test_states import CLIFFORD, ENTANGLED

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    qfs = mount_factory(extra=["--profile", "fault_tolerant", "--metrics-port", str(port)])
    shown = json.loads((qfs.root / ".qfs" / "config").read_text())
    chosen = shown["state_store"]["default_serialization_format"]
    assert (chosen["value"], chosen["from"]) == ("stabilizer", "profile fault_tolerant")
    assert shown["live_qubit_mgr"]["isolation_level"]["value"] == "strict"
    prepared_task(qfs, "c", CLIFFORD, circuit="cliff")
    command(qfs.qubits / "tasks" / "c" / "ctl", "checkpoint clifford")
    prepared_task(qfs, "e", ENTANGLED, circuit="ent")
    command(qfs.qubits / "tasks" / "e" / "ctl", "checkpoint entangled")
    meta = {n: json.loads((qfs.root / "states" / n / "meta.json").read_text())
            for n in ("clifford", "entangled")}
    assert meta["clifford"]["format"] == "stabilizer"
    assert meta["entangled"]["format"] != "stabilizer"
    assert "the default stabilizer cannot hold this state" in meta["entangled"]["format_reason"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    assert "qfs_qubit_allocation_seconds_count 2.0" in body
    done = subprocess.run([*QFSMOUNT, str(tmp_path), "--profile", "quantum_supremacy"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "profile 'quantum_supremacy'" in done.stderr


def _edit_checkpoint(data, name: str, **changes) -> None:
    """Change one checkpoint record offline (the mount stopped), as damage or an editor would."""
    meta = LmdbMetaStore(data / "meta.lmdb", 1024)
    with meta.writing() as txn:
        record = json.loads(txn.get("checkpoints", changes.pop("source", name).encode()))
        record.update(name=name, **changes)
        txn.put("checkpoints", name.encode(), json.dumps(record).encode())
    meta.close()


def test_checkpoints_sharing_a_blob_survive_each_other(mount_factory):
    qfs = mount_factory()
    prepared_task(qfs, "d")
    ctl = qfs.qubits / "tasks" / "d" / "ctl"
    for line in ("checkpoint one format=statevector encrypt=0",
                 "checkpoint two format=statevector encrypt=0",
                 "checkpoint brief format=statevector encrypt=0 retention=1s"):
        command(ctl, line)
    blobs = {(qfs.root / "states" / n / "blob").read_bytes() for n in ("one", "two", "brief")}
    assert len(blobs) == 1 and len(list((qfs.data / "blobs").glob("??/*"))) == 1
    subprocess.run(["rm", "-r", str(qfs.root / "states" / "one")], check=True)
    wait_until_deleted(qfs.data, "brief")
    exact = Statevector(qasm3.loads(ENTANGLED))
    assert state_fidelity(Statevector(np.load(qfs.root / "states" / "two" / "statevector.npy")),
                          exact) > 1 - 1e-12
    qfs.stop()
    assert run_check(qfs.data) == (0, [])
    # A damaged record sharing the survivor's blob: repair drops the record, not the blob.
    _edit_checkpoint(qfs.data, "ghost", source="two", parent="vanished")
    code, findings = run_check(qfs.data, "--repair")
    assert code == 0 and [(f["kind"], f["subject"]) for f in findings] == [
        ("broken_checkpoint", "ghost")]
    assert run_check(qfs.data) == (0, [])
    second = mount_factory(data=qfs.data)
    assert os.listdir(second.root / "states") == ["two"]
    assert state_fidelity(
        Statevector(np.load(second.root / "states" / "two" / "statevector.npy")),
        exact) > 1 - 1e-12


@pytest.mark.damages_data
def test_edited_blob_keys_are_never_used_as_paths(mount_factory, tmp_path):
    qfs = mount_factory()
    prepared_task(qfs, "k")
    command(qfs.qubits / "tasks" / "k" / "ctl", "checkpoint real format=statevector encrypt=0")
    qfs.stop()
    victim = tmp_path / "victim"
    victim.write_bytes(next((qfs.data / "blobs").glob("??/*")).read_bytes())
    _edit_checkpoint(qfs.data, "absolute", source="real", blob=str(victim))
    _edit_checkpoint(qfs.data, "dotdot", source="real", blob="../../victim")
    second = mount_factory(data=qfs.data)
    for name in ("absolute", "dotdot"):
        for action in (lambda d: (d / "blob").read_bytes(),
                       lambda d: np.load(d / "statevector.npy"),
                       lambda d: (d / "meta.json").read_bytes(),
                       os.rmdir):
            with pytest.raises(OSError) as caught:
                action(second.root / "states" / name)
            assert caught.value.errno == errno.EIO
    assert "not a SHA-256 hex digest" in (second.root / ".qfs" / "log").read_text()
    second.stop()
    assert victim.exists()
    code, findings = run_check(qfs.data, "--repair")
    assert code == 0 and {(f["kind"], f["subject"]) for f in findings} == {
        ("broken_checkpoint", "absolute"), ("broken_checkpoint", "dotdot")}
    assert all("not a SHA-256 hex digest" in f["detail"] for f in findings)
    assert victim.exists() and run_check(qfs.data) == (0, [])
    assert stored_checkpoints(qfs.data) == {"real"}
