"""Every configuration key qfs accepts does something, and a value it cannot honour is
refused at mount time with a message naming the key."""

import errno
import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from levels import native, tuning
from levels.config import load_config
from levels.devices import Devices, DeviceSpec, heavy_hex_edges
from levels.errors import Invalid
from levels.fabric import Fabric
from tests.conftest import BELL
from tests.test_circuit_writes import versions
from tests.test_qubits import command, mapping, refused

EAGLE = {frozenset(e) for e in heavy_hex_edges(127)}


def mount_with(mount_factory, tmp_path: Path, yaml: str):
    config = tmp_path / "qfs.yaml"
    config.write_text(yaml)
    return mount_factory(extra=["--config", str(config)])


@pytest.mark.fuse
def test_versioning_off_keeps_the_latest_version_only(mount_factory, tmp_path):
    qfs = mount_with(mount_factory, tmp_path, "circuit_fs:\n  versioning_enabled: false\n")
    bell = qfs.write_circuit("bell")
    (bell / "latest.qasm").write_text(BELL + "// edited\n")
    assert versions(bell) == [2]
    assert "versioning_enabled: false" in (qfs.root / ".qfs" / "log").read_text()


@pytest.mark.fuse
def test_retention_policy_drops_old_unpinned_versions(mount_factory, tmp_path):
    qfs = mount_with(mount_factory, tmp_path, "circuit_fs:\n  retention_policy: 1s\n")
    bell = qfs.write_circuit("bell")
    (bell / "latest.qasm").write_text(BELL + "// v2\n")
    os.setxattr(bell / "v2.qasm", "user.qfs.pinned", b"1")
    time.sleep(1.2)
    (bell / "latest.qasm").write_text(BELL + "// v3\n")
    assert versions(bell) == [2, 3]  # v1 aged out; v2 is pinned; v3 is the newest
    assert "none older than 1s (retention_policy)" in (qfs.root / ".qfs" / "log").read_text()


@pytest.mark.fuse
def test_a_backup_written_newest_first_keeps_its_pinned_old_versions(mount_factory, tmp_path):
    """Into a circuit made by mkdir, retention waits for the filling to end: the backup's
    oldest, pinned version comes before meta.json brings its pin (it was EINVAL, "would
    be dropped at once")."""
    qfs = mount_with(mount_factory, tmp_path, "circuit_fs:\n  max_versions_per_artifact: 2\n")
    bell = qfs.write_circuit("bell")
    os.setxattr(bell / "v1.qasm", "user.qfs.pinned", b"1")
    for i in (2, 3, 4):
        (bell / "latest.qasm").write_text(BELL + f"// v{i}\n")
    assert versions(bell) == [1, 3, 4]
    backup = {name: (bell / name).read_bytes()
              for name in ("latest.qasm", "v4.qasm", "v3.qasm", "v1.qasm", "meta.json")}
    restored = qfs.circuits / "restored"
    restored.mkdir()
    for name, data in backup.items():  # newest first, meta.json (the pin) last
        fd = os.open(restored / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    assert versions(restored) == [1, 3, 4]
    assert json.loads((restored / "meta.json").read_text())["pinned"] == [1]
    (restored / "latest.qasm").write_text(BELL + "// v5\n")  # retention acts again
    assert versions(restored) == [1, 4, 5]


@pytest.mark.fuse
def test_topology_aware_allocation_takes_the_lowest_numbered_fit(mount_factory, tmp_path):
    qfs = mount_with(mount_factory, tmp_path,
                     "live_qubit_mgr:\n  allocation_strategy: topology_aware\n")
    command(qfs.qubits / "ctl", "alloc 3 task=t topology=linear")
    qubits = mapping(qfs, "t")
    assert all(frozenset(p) in EAGLE for p in itertools.pairwise(qubits))
    assert min(qubits) == 0  # q0 starts a line on heavy hex; the default picks by fidelity


def test_noise_aware_allocation_does_not_weigh_couplings(tmp_path):
    fabric = Fabric(tmp_path / "d", load_config(environ={"QFS_ALLOCATION_STRATEGY":
                                                         "noise_aware"}))
    try:
        from levels import allocation

        device = fabric.qubits.device("eagle")
        qubits, value = allocation.choose(device, set(range(127)), 2, "linear",
                                          strategy="noise_aware")
        assert value == pytest.approx(allocation.score(device, qubits, ()))
        _, weighed = allocation.choose(device, set(range(127)), 2, "linear")
        assert weighed < value  # the default also multiplies in the coupling's fidelity
    finally:
        fabric.close()


def test_cache_off_io_threads_and_compression_threads_take_effect(tmp_path):
    config = load_config(environ={"QFS_CACHE_ENABLED": "false"})
    config.performance.io_threads = 3
    fabric = Fabric(tmp_path / "d", config)
    try:
        assert native._threads._max_workers == 3
        cache = fabric.states.decoded_npy
        cache.put("a", b"x" * 10)
        cache.put("b", b"y" * 10)
        assert cache.peek("a") is None and cache.peek("b") is not None
    finally:
        fabric.close()


@pytest.mark.parametrize(("yaml", "key"), [
    ("cross_level:\n  consistency_level: eventual\n", "cross_level.consistency_level"),
    ("state_store:\n  encryption_algorithm: ChaCha20\n", "state_store.encryption_algorithm"),
    ("circuit_fs:\n  index_types: [vector]\n", "circuit_fs.index_types"),
    ("circuit_fs:\n  retention_policy: a week\n", "circuit_fs.retention_policy"),
    ("state_store:\n  checkpoint_retention: 0s\n", "state_store.checkpoint_retention"),
    ("live_qubit_mgr:\n  allocation_strategy: random\n", "live_qubit_mgr.allocation_strategy"),
    ("performance:\n  io_threads: 0\n", "performance.io_threads"),
])
def test_values_qfs_cannot_honour_are_refused_naming_the_key(tmp_path, yaml, key):
    config = tmp_path / "qfs.yaml"
    config.write_text(yaml)
    with pytest.raises(Invalid, match=key.replace(".", r"\.")):
        load_config(config, environ={})


@pytest.mark.fuse
def test_switched_off_feed_forward_and_migration_are_refused_with_the_key(mount_factory,
                                                                         tmp_path):
    qfs = mount_with(mount_factory, tmp_path,
                     "live_qubit_mgr:\n  feedforward_enabled: false\n"
                     "cross_level:\n  migration_enabled: false\n")
    command(qfs.qubits / "ctl", "alloc 2 task=t")
    first, second = mapping(qfs, "t")
    assert refused(qfs.qubits / f"q{first}" / "ctl",
                   f"on 1 do x q{second}") == errno.EOPNOTSUPP
    assert refused(qfs.qubits / "tasks" / "t" / "ctl", "migrate device=eagle") == errno.EOPNOTSUPP
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "live_qubit_mgr.feedforward_enabled" in log
    assert "cross_level.migration_enabled" in log


def test_feed_forward_target_is_the_tuning_threshold(tmp_path):
    config = load_config(environ={})
    config.live_qubit_mgr.feedforward_latency_target_ms = 1
    fabric = Fabric(tmp_path / "d", config)
    try:
        fabric.metrics.feedforward_latency_seconds.observe(0.002)
        found = {b["bottleneck"]: b for b in tuning.report(fabric.metrics)["bottlenecks"]}
        assert found["HighFeedforwardLatency"]["threshold"] == 0.001
    finally:
        fabric.close()


def test_devices_are_calibrated_anew_every_interval():
    now = [0.0]
    devices = Devices([DeviceSpec("lab", 5, "linear", seed=3)], recalibrate_every_s=60,
                      clock=lambda: now[0])
    first = devices.get("lab")
    assert devices.get("lab") is first and first.epoch == 0
    now[0] = 61
    second = devices.get("lab")
    assert second.epoch == 1 and second.spec.seed == 4
    assert [c.t1 for c in second.calibration] != [c.t1 for c in first.calibration]
    assert second.calibration_json(0)["calibration"] == 1


@pytest.mark.fuse
def test_calibration_json_shows_each_new_calibration(mount_factory, tmp_path):
    qfs = mount_with(mount_factory, tmp_path, "live_qubit_mgr:\n  calibration_interval: 1s\n")
    before = json.loads((qfs.qubits / "q3" / "calibration.json").read_text())
    time.sleep(1.1)
    after = json.loads((qfs.qubits / "q3" / "calibration.json").read_text())
    assert after["calibration"] > before["calibration"]
    assert after["t1"] != before["t1"]


@pytest.mark.fuse
def test_telemetry_keeps_the_configured_samples_at_the_configured_period(mount_factory,
                                                                         tmp_path):
    qfs = mount_with(mount_factory, tmp_path,
                     "live_qubit_mgr:\n  telemetry_collection_interval: 100ms\n"
                     "performance:\n  telemetry_buffer_size: 5\n")
    command(qfs.qubits / "ctl", "alloc 3 task=t isolate=spatial")
    time.sleep(0.8)
    lines = (qfs.qubits / "telemetry").read_text().splitlines()
    assert len(lines) == 5  # more were taken; the buffer keeps the last five
    samples = [json.loads(line) for line in lines]
    assert all(b["time"] > a["time"] for a, b in itertools.pairwise(samples))
    last = samples[-1]
    assert (last["device"], last["tasks"], last["allocated"]) == ("eagle", 1, 3)
    assert last["buffer"] > 0 and last["free"] == 127 - 3 - last["buffer"]


@pytest.mark.fuse
def test_index_types_choose_which_searches_are_offered(mount_factory, tmp_path):
    qfs = mount_with(mount_factory, tmp_path, "circuit_fs:\n  index_types: [metadata]\n")
    qfs.write_circuit("bell")
    qfs.write_circuit("other")
    assert os.listdir(qfs.root / "search" / "qubits:2") == ["bell", "other"]  # facets
    qfs.write_circuit("third")  # the results kept for the query follow the change
    assert sorted(os.listdir(qfs.root / "search" / "qubits:2")) == ["bell", "other", "third"]
    with pytest.raises(OSError) as caught:
        os.listdir(qfs.root / "search" / "bell")  # a word: the text index is off
    assert caught.value.errno == errno.EOPNOTSUPP
    assert os.listdir(qfs.circuits / "bell" / "similar") == []  # no `semantic`
    assert not (qfs.data / "index").exists()
    assert "circuit_fs.index_types" in (qfs.root / ".qfs" / "log").read_text()


@pytest.mark.fuse
def test_indexing_off_refuses_every_search(mount_factory, tmp_path):
    qfs = mount_with(mount_factory, tmp_path, "circuit_fs:\n  indexing_enabled: false\n")
    qfs.write_circuit("bell")
    with pytest.raises(OSError) as caught:
        os.listdir(qfs.root / "search" / "qubits:2")
    assert caught.value.errno == errno.EOPNOTSUPP
    assert "circuit_fs.indexing_enabled" in (qfs.root / ".qfs" / "log").read_text()


def read_ahead_kb(mountpoint: Path) -> int:
    device = os.stat(mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    return int(knob.read_text())


@pytest.mark.fuse
@pytest.mark.skipif(os.getuid() != 0, reason="the read-ahead window is root's to set")
def test_read_ahead_window_is_widened_after_the_mount(mount_factory, tmp_path):
    """The kernel's 128 KiB window would split a checkpoint's read into 128 KiB requests;
    the daemon widens it once FUSE's INIT is done (INIT would narrow it back)."""
    default = mount_factory()
    narrow = mount_with(mount_factory, tmp_path, "performance:\n  read_ahead_kb: 256\n")

    def logged() -> bool:  # the daemon logs the window just after setting it
        return "read-ahead 256 KiB" in narrow.daemon_log() or "read-ahead 256 KiB" in (
            narrow.data / "qfs.log").read_text()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ((read_ahead_kb(default.root), read_ahead_kb(
            narrow.root)) != (1024, 256) or not logged()):
        time.sleep(0.05)
    assert (read_ahead_kb(default.root), read_ahead_kb(narrow.root)) == (1024, 256)
    assert logged()


@pytest.mark.fuse
def test_extended_attributes_off_leaves_metadata_to_meta_json(mount_factory, tmp_path):
    """performance.extended_attributes: false answers every xattr request ENOSYS once, so
    the kernel stops asking (each write() otherwise asks for security.capability): tools
    read EOPNOTSUPP, cp -a copies without them, and meta.json still sets metadata and pins."""
    qfs = mount_with(mount_factory, tmp_path,
                     "performance:\n  extended_attributes: false\n")
    bell = qfs.write_circuit("bell")
    (bell / "latest.qasm").write_text(BELL + "// v2\n")
    listing = subprocess.run(["ls", "-l", str(qfs.circuits)], capture_output=True, text=True,
                             check=True).stdout
    assert " bell\n" in listing
    for call, args in ((os.getxattr, ("user.qfs.author",)), (os.listxattr, ()),
                       (os.setxattr, ("user.qfs.author", b"bob"))):
        for _ in range(2):  # the second is the kernel's own answer
            with pytest.raises(OSError) as caught:
                call(bell, *args)
            assert caught.value.errno == errno.EOPNOTSUPP
    (bell / "meta.json").write_text(json.dumps({"author": "alice", "pinned": [1]}))
    meta = json.loads((bell / "meta.json").read_text())
    assert meta["author"] == "alice" and meta["pinned"] == [1]
    subprocess.run(["cp", "-a", str(bell), str(tmp_path / "copy")], check=True)
    assert (tmp_path / "copy" / "v1.qasm").read_text() == BELL
