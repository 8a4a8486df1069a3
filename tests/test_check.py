"""Consistency across levels: qfsmount --check [--repair], /.qfs/health and /.qfs/config."""

import json
import subprocess

import pytest

from levels.store.meta import LmdbMetaStore
from tests.conftest import QFSMOUNT
from tests.test_qubits import command
from tests.test_states import prepared_task

pytestmark = pytest.mark.fuse


def run_check(data, *extra) -> tuple[int, list[dict]]:
    done = subprocess.run([*QFSMOUNT, "--check", "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=120)
    findings = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, findings


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
    assert shown["circuit_fs"]["max_versions_per_artifact"] == {"value": 4, "from": str(config)}
    assert shown["cross_level"]["migration_fidelity_threshold"] == {"value": 0.95,
                                                                   "from": "default"}
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
    assert shown["state_store"]["default_serialization_format"] == {
        "value": "stabilizer", "from": "profile fault_tolerant"}
    assert shown["live_qubit_mgr"]["isolation_level"]["value"] == "strict"
    prepared_task(qfs, "c", CLIFFORD, circuit="cliff")
    command(qfs.qubits / "tasks" / "c" / "ctl", "checkpoint clifford")
    prepared_task(qfs, "e", ENTANGLED, circuit="ent")
    command(qfs.qubits / "tasks" / "e" / "ctl", "checkpoint entangled")
    meta = {n: json.loads((qfs.root / "states" / n / "meta.json").read_text())
            for n in ("clifford", "entangled")}
    assert meta["clifford"]["format"] == "stabilizer"
    assert meta["entangled"]["format"] != "stabilizer"
    assert "not a stabilizer state" in meta["entangled"]["format_reason"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    assert "qfs_qubit_allocation_seconds_count 2.0" in body
    done = subprocess.run([*QFSMOUNT, str(tmp_path), "--profile", "quantum_supremacy"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "profile 'quantum_supremacy'" in done.stderr
