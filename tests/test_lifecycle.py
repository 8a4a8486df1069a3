"""qfsmount as a command: backgrounding, clear refusals, clean unmounts, remount."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import BELL, QFSMOUNT, assert_consistent

MARK = "QFS_MALLOC_TUNABLES"

pytestmark = pytest.mark.fuse


def _wait_unmounted(path, proc=None, timeout=20.0):
    deadline = time.monotonic() + timeout
    while os.path.ismount(path):
        assert time.monotonic() < deadline, "still mounted"
        time.sleep(0.05)
    if proc is not None:
        assert proc.wait(timeout=timeout) == 0


def test_backgrounds_like_sshfs_and_fusermount_unmounts(tmp_path):
    mnt, data = tmp_path / "m", tmp_path / "d"
    mnt.mkdir()
    done = subprocess.run([*QFSMOUNT, str(mnt), "--data", str(data)], timeout=60)
    try:
        assert done.returncode == 0
        assert os.path.ismount(mnt)  # mounted by the time the command returned
        assert sorted(os.listdir(mnt)) == [".qfs", "circuits", "qubits", "search", "states",
                                           "workflows"]
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    _wait_unmounted(mnt)
    assert "Traceback" not in (data / "qfs.log").read_text()


def _daemon_environ(mnt) -> list[bytes]:
    """The environment of the process serving `mnt` (found by its command line)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if str(mnt).encode() not in cmdline.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/environ", "rb") as environ:
                return environ.read().split(b"\0")
        except OSError:
            continue
    raise AssertionError(f"no process serves {mnt}")


def test_the_installed_command_mounts_with_its_malloc_tunables(tmp_path):
    """The console script README's commands use runs again with its malloc tunables
    before it imports the rest of qfs, then backgrounds as -m qfsmount.cli does."""
    mnt, data = tmp_path / "m", tmp_path / "d"
    mnt.mkdir()
    installed = os.path.join(os.path.dirname(sys.executable), "qfsmount")
    env = {k: v for k, v in os.environ.items() if k not in (MARK, "GLIBC_TUNABLES")}
    done = subprocess.run([installed, str(mnt), "--data", str(data)], timeout=60, env=env)
    try:
        assert done.returncode == 0 and os.path.ismount(mnt)
        assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in _daemon_environ(mnt)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    _wait_unmounted(mnt)
    assert_consistent(data, [])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(qfs, signum):
    qfs.write_circuit("kept")
    qfs.proc.send_signal(signum)
    _wait_unmounted(qfs.root, qfs.proc)
    qfs.proc = None
    assert "unmounted" in qfs.daemon_log()


def test_missing_mountpoint_is_a_message_not_a_traceback(tmp_path):
    done = subprocess.run([*QFSMOUNT, str(tmp_path / "nope")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_a_data_directory_that_cannot_be_one_is_a_message(tmp_path):
    """Said before the daemon forks (its stderr is /dev/null, and its log would be in
    that directory): it once said only "the daemon exited before mounting (see qfs.log)"."""
    (tmp_path / "mnt").mkdir()
    (tmp_path / "file").write_text("x")
    for data, why in ((tmp_path / "file", "not a directory"),
                      (tmp_path / "file" / "sub", "Not a directory")):
        done = subprocess.run([*QFSMOUNT, str(tmp_path / "mnt"), "--data", str(data)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr == f"qfsmount: data directory {data}: {why}\n"
    assert not os.path.ismount(tmp_path / "mnt")


def test_busy_mountpoint_is_refused(qfs):
    done = subprocess.run([*QFSMOUNT, str(qfs.root), "--data", str(qfs.data) + "2"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "busy" in done.stderr and "Traceback" not in done.stderr


def test_bad_config_names_the_key(tmp_path):
    (tmp_path / "m").mkdir()
    config = tmp_path / "qfs.yaml"
    config.write_text("quantum_data_fabric:\n  circuit_fs:\n    max_versions: 3\n")
    done = subprocess.run([*QFSMOUNT, str(tmp_path / "m"), "--config", str(config)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "circuit_fs.max_versions" in done.stderr


@pytest.mark.parametrize(("devices", "key"), [
    ("[{name: d, qubits: 4, topology: moebius}]", "live_qubit_mgr.devices.0.topology"),
    ("[{name: d, qubits: 4, topology: ring}, {name: d, qubits: 5, topology: ring}]",
     "device names must be distinct"),
    ("[{name: a/b, qubits: 4, topology: ring}]", "live_qubit_mgr.devices.0.name"),
    ("[{name: '..', qubits: 4, topology: ring}]", "live_qubit_mgr.devices.0.name"),
])
def test_a_device_the_tree_cannot_hold_stops_the_mount(tmp_path, devices, key):
    """A device's name is a path component of /devices and compiled/, its topology one
    qfs builds: anything else stops the mount naming the key (it mounted, then /devices
    was EIO and every use EINVAL)."""
    (tmp_path / "m").mkdir()
    config = tmp_path / "qfs.yaml"
    config.write_text(f"live_qubit_mgr:\n  devices: {devices}\n")
    done = subprocess.run([*QFSMOUNT, str(tmp_path / "m"), "--data", str(tmp_path / "d"),
                           "--config", str(config)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert key in done.stderr and "Traceback" not in done.stderr


def test_remount_keeps_everything(mount_factory):
    first = mount_factory()
    first.write_circuit("bell")
    (first.circuits / "bell" / "latest.qasm").write_text(BELL.replace("h q[0]", "x q[0]"))
    (first.circuits / "bell" / "meta.json").write_text('{"author": "alice", "tags": ["demo"]}')
    (first.circuits / "bell" / "results" / "run1.json").write_text('{"counts": {"00": 3}}')
    first.stop()
    second = mount_factory(data=first.data)
    bell = second.circuits / "bell"
    assert (bell / "v1.qasm").read_text() == BELL
    assert "x q[0]" in (bell / "latest.qasm").read_text()
    assert '"alice"' in (bell / "meta.json").read_text()
    assert (bell / "results" / "run1.json").read_text() == '{"counts": {"00": 3}}'
    assert os.listdir(second.root / "search" / "author:alice") == ["bell"]


def test_search_index_rebuilt_when_missing(mount_factory):
    first = mount_factory()
    first.write_circuit("ghost")
    first.stop()
    shutil.rmtree(first.data / "index")
    second = mount_factory(data=first.data)
    assert os.listdir(second.root / "search" / "ghost") == ["ghost"]


def test_reindex_option_rebuilds(mount_factory):
    first = mount_factory()
    first.write_circuit("phoenix")
    first.stop()
    second = mount_factory(data=first.data, extra=["--reindex"])
    assert os.listdir(second.root / "search" / "phoenix") == ["phoenix"]
    assert "rebuilt with 1 circuits" in (first.data / "qfs.log").read_text()


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "qfsmount.cli", "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "MOUNTPOINT" in done.stdout.upper()


# After the command's first step: the process's pid, its GLIBC_TUNABLES, and the bytes
# glibc's malloc mapped on its own for a 6 MiB buffer (mallinfo2's hblkhd).
FIRST_STEP = """
import ctypes, os
from qfsmount.mallocsettings import apply_malloc_settings
apply_malloc_settings()
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
before = mallinfo2().hblkhd
buffer = bytearray(6 << 20)
print(os.getpid(), mallinfo2().hblkhd - before, os.environ.get("GLIBC_TUNABLES", ""))
"""


def _after_the_first_step(env: dict[str, str]) -> tuple[str, int]:
    """(GLIBC_TUNABLES, bytes mapped for a 6 MiB buffer) in a process that ran the
    command's first step, started with `env` over this environment less the two
    variables."""
    clean = {k: v for k, v in os.environ.items() if k not in (MARK, "GLIBC_TUNABLES")}
    started = subprocess.Popen([sys.executable, "-c", FIRST_STEP], stdout=subprocess.PIPE,
                               text=True, env={**clean, **env})
    pid, mapped, tunables = (started.communicate(timeout=60)[0].strip() + " ").split(" ", 2)
    assert int(pid) == started.pid  # the same process, run again in place
    return tunables.strip(), int(mapped)


def test_the_daemon_runs_again_with_its_malloc_tunables_unless_told_not_to(qfs):
    """glibc's malloc maps the daemon's large buffers with transparent huge pages and
    serves chunk-sized ones from its arenas (a page fault per 4 KiB was 40% of an
    import's writes); a user's own tunables are kept, and QFS_MALLOC_TUNABLES=0 leaves
    the process as started."""
    with open(f"/proc/{qfs.proc.pid}/environ", "rb") as environ:
        assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in environ.read().split(b"\0")
    assert _after_the_first_step({}) == ("glibc.malloc.hugetlb=1", 0)
    assert _after_the_first_step({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) \
        == ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", 0)
    tunables, mapped = _after_the_first_step({MARK: "0"})
    assert tunables == "" and mapped >= 6 << 20  # as started: glibc maps it afresh
