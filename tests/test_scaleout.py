"""Scale-out on real servers: the metadata store on PostgreSQL and the blob store on S3
(SeaweedFS), both started once per session by scripts/cluster.sh; each test gets a fresh
database and a fresh bucket. The store contracts run against the embedded and the shared
backends alike; then mounts on the shared backends, and two mounts with their own data
directories as two hosts of one fabric."""

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from levels.errors import Corrupt, NotFound, Unavailable
from levels.store.blobs import DirectoryBlobStore, writer_for
from levels.store.meta import LmdbMetaStore
from qfsmount.cli import main as qfsmount_main
from tests.conftest import BELL, GHZ3, QFSMOUNT, Mount
from tests.test_qubits import command, refused

ROOT = Path(__file__).resolve().parent.parent
ENTANGLED = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
ry(0.7) q[0];
h q[1];
cx q[1], q[2];
cx q[0], q[2];
"""


# -- the servers ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    """scripts/cluster.sh up in a directory of this session; its environment as a dict
    (the AWS_* credentials are exported for boto3 and the mounts; QFS_* are not, so no
    other test's mount is moved onto the servers)."""
    directory = tmp_path_factory.mktemp("cluster")
    env = dict(os.environ, QFS_CLUSTER_DIR=str(directory))
    script = ROOT / "scripts" / "cluster.sh"
    done = subprocess.run(["bash", str(script), "up"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    values = {}
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = value.strip("'")
    values["QFS_CLUSTER_DIR"] = str(directory)
    saved = {k: os.environ.get(k) for k in values if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in values.items() if k.startswith("AWS_")})
    try:
        yield values
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        subprocess.run(["bash", str(script), "down"], env=env, capture_output=True,
                       timeout=120)
        elsewhere = directory / "pg.dir"  # PostgreSQL's data, where `nobody` could write
        if elsewhere.exists():
            shutil.rmtree(elsewhere.read_text().strip(), ignore_errors=True)


def fresh_backends(cluster: dict[str, str]) -> dict[str, str]:
    """A fresh database and bucket name: dsn, endpoint, bucket."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster["QFS_METADATA_DSN"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return {"dsn": cluster["QFS_METADATA_DSN"].rsplit("/", 1)[0] + f"/{name}",
            "endpoint": cluster["QFS_S3_ENDPOINT"], "bucket": name}


@pytest.fixture
def shared(cluster) -> dict[str, str]:
    return fresh_backends(cluster)


def pg_store(dsn: str, host: str = "test-host"):
    from levels.store.pg import PostgresMetaStore

    return PostgresMetaStore(dsn, host)


# -- the metadata store contract, on LMDB and PostgreSQL --------------------------------

@pytest.fixture(params=["lmdb", "postgresql"])
def stores(request, tmp_path) -> Iterator[list]:
    """Two handles on one metadata store (for PostgreSQL: two hosts' connection pools;
    LMDB is one per process, so the same handle twice)."""
    if request.param == "lmdb":
        store = LmdbMetaStore(tmp_path / "meta.lmdb", 64)
        handles = [store, store]
    else:
        dsn = request.getfixturevalue("shared")["dsn"]
        handles = [pg_store(dsn, "host-a"), pg_store(dsn, "host-b")]
    yield handles
    for handle in {id(h): h for h in handles}.values():
        handle.close()


def test_store_contract_rows_scans_and_rollback(stores):
    store, other = stores
    with store.writing() as txn:
        for key in (b"a", b"ab", b"a\xff", b"a\xff\xff", b"b", b"\xff"):
            txn.put("names", key, b"v" + key)
        txn.put("circuits", b"a", b"other table")
    with other.reading() as txn:
        assert txn.get("names", b"ab") == b"vab" and txn.get("names", b"zz") is None
        assert [k for k, _ in txn.scan("names", b"a")] == [b"a", b"ab", b"a\xff", b"a\xff\xff"]
        assert [k for k, _ in txn.scan("names", b"a\xff")] == [b"a\xff", b"a\xff\xff"]
        assert [k for k, _ in txn.scan("names")][-1] == b"\xff"
        assert dict(txn.scan("circuits")) == {b"a": b"other table"}
    with pytest.raises(RuntimeError), store.writing() as txn:  # all or nothing
        txn.put("names", b"c", b"new")
        txn.delete("names", b"a")
        raise RuntimeError("the level gave up half way")
    with other.reading() as txn:
        assert txn.get("names", b"c") is None and txn.get("names", b"a") == b"va"
    with other.writing() as txn:
        txn.put("names", b"a", b"replaced")
        txn.delete("names", b"b")
        txn.delete("names", b"never there")
    with store.reading() as txn:
        assert txn.get("names", b"a") == b"replaced" and txn.get("names", b"b") is None
        assert txn.keys("names", b"a", b"b", 10) == [b"a", b"ab", b"a\xff", b"a\xff\xff"]
        assert txn.keys("names", b"a", b"b", 2) == [b"a", b"ab"]
        assert txn.get_many("names", [b"ab", b"zz", b"a"]) == [b"vab", None, b"replaced"]
        before = txn.snapshot()
    with store.reading() as txn:
        assert txn.snapshot() == before  # nothing written since
    with other.writing() as txn:
        txn.put("circuits", b"z", b"a change")
    with store.reading() as txn:
        after = txn.snapshot()
    # LMDB: the id of the last commit a reader sees; PostgreSQL keeps none
    if isinstance(store, LmdbMetaStore):
        assert before is not None and after != before
    else:
        assert (before, after) == (None, None)


def test_store_writers_take_turns_on_a_read_modify_write(stores):
    """What versions and allocations rely on: a write transaction that reads a row and
    writes it back is never interleaved with another host's (no lost update)."""
    with stores[0].writing() as txn:
        txn.put("settings", b"counter", b"0")

    def bump(store, times: int) -> None:
        for _ in range(times):
            with store.writing() as txn:
                value = int(txn.get("settings", b"counter"))
                time.sleep(0.001)  # widen the window a check-then-write would lose in
                txn.put("settings", b"counter", str(value + 1).encode())

    threads = [threading.Thread(target=bump, args=(stores[i % 2], 25)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with stores[1].reading() as txn:
        assert txn.get("settings", b"counter") == b"100"


def test_postgresql_schema_is_versioned_and_made_once(shared):
    first, second = pg_store(shared["dsn"]), pg_store(shared["dsn"])  # the second migrates nothing
    first.close()
    second.close()
    import psycopg

    from levels.store.meta import TABLES
    from levels.store.pg import SCHEMA_VERSION

    with psycopg.connect(shared["dsn"]) as conn:
        assert conn.execute("SELECT version FROM qfs_schema").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'qfs_%'")}
    assert {f"qfs_{t}" for t in TABLES} | {"qfs_schema", "qfs_changes", "qfs_writer"} <= tables


def test_postgresql_unreachable_is_one_reason_naming_it():
    with pytest.raises(Unavailable) as caught:
        pg_store("postgresql://qfs@127.0.0.1:1/qfs")
    message = str(caught.value)
    assert message.startswith("metadata store unreachable: PostgreSQL at 127.0.0.1:1/qfs")
    assert "\n" not in message


# -- the blob store contract, on a directory and on S3 ---------------------------------

@pytest.fixture(params=["directory", "s3"])
def blobs(request, tmp_path):
    if request.param == "directory":
        return DirectoryBlobStore(tmp_path / "blobs")
    from levels.store.s3 import S3BlobStore

    where = request.getfixturevalue("shared")
    return S3BlobStore(where["endpoint"], where["bucket"])  # the bucket is created


def test_blob_store_contract_with_ranges(blobs):
    data = bytes(range(256)) * 40
    key = blobs.put(data)
    assert blobs.put(data) == key and len(key) == 64  # content-addressed: one blob
    assert blobs.get(key) == data
    assert blobs.get_range(key, 0, 10) == data[:10]
    assert blobs.get_range(key, 5000, 300) == data[5000:5300]
    assert blobs.get_range(key, len(data) - 4, 100) == data[-4:]  # fewer at the end
    assert blobs.get_range(key, len(data), 10) == b""
    other = blobs.put(b"another")
    assert blobs.list() == sorted([key, other])
    blobs.delete(key)
    blobs.delete(key)  # a missing blob is no error
    assert blobs.list() == [other]
    for read in (lambda: blobs.get(key), lambda: blobs.get_range(key, 0, 1)):
        with pytest.raises(NotFound):
            read()
    with pytest.raises(Corrupt):
        blobs.get("../../etc/passwd")
    # Written in parts and read back before commit (an `auto` import left open by its
    # evidence is decoded from its staged chunks), then named as `put` names it.
    writer = writer_for(blobs)
    for part in (data[:3000], data[3000:7000], data[7000:]):
        writer.write(part)
    assert writer.read(2990, 20) == data[2990:3010]  # across two parts
    assert writer.read(len(data) - 4, 100) == data[-4:]
    writer.write(b"!")
    assert writer.read(len(data), 10) == b"!"
    assert writer.commit() == blobs.put(data + b"!")


def test_circuit_storage_backend_s3_puts_the_blobs_in_s3(shared, tmp_path):
    from levels.config import load_config
    from levels.store.backends import open_blobs
    from levels.store.s3 import S3BlobStore

    config = load_config(environ={"QFS_CIRCUIT_STORAGE_BACKEND": "s3",  # the reference's
                                  "QFS_S3_ENDPOINT": shared["endpoint"],
                                  "QFS_S3_BUCKET": shared["bucket"]})
    assert isinstance(open_blobs(tmp_path, config), S3BlobStore)
    local = open_blobs(tmp_path, load_config(environ={}))
    assert isinstance(local, DirectoryBlobStore)


def test_s3_unreachable_is_one_reason_naming_it(monkeypatch):
    from levels.store.s3 import S3BlobStore

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "qfs")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "whatever")
    with pytest.raises(Unavailable) as caught:
        S3BlobStore("http://127.0.0.1:1", "qfs")
    assert "blob store unreachable: S3 at http://127.0.0.1:1" in str(caught.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(Unavailable) as caught:  # no credentials: said in one line too
        S3BlobStore("http://127.0.0.1:1", "qfs")
    assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "\n" not in str(caught.value)


# -- mounts on the shared backends -------------------------------------------------------

def config_file(tmp_path: Path, where: dict[str, str]) -> Path:
    path = tmp_path / "qfs.yaml"
    path.write_text(json.dumps({
        "cross_level": {"metadata_backend": "postgresql", "metadata_dsn": where["dsn"]},
        "circuit_fs": {"storage_backend": "s3", "s3_endpoint": where["endpoint"],
                       "s3_bucket": where["bucket"]},
        "state_store": {"storage_backend": "s3"},
        "performance": {"worker_processes": 1},
    }))
    return path


@pytest.fixture
def hosts(mount_factory, shared, tmp_path):
    """Mount factory for hosts of one shared fabric: own data directory, same servers."""
    options = ["--config", str(config_file(tmp_path, shared)),
               "--key-file", str(tmp_path / "shared.key")]

    def host(name: str):
        return mount_factory(data=tmp_path / f"data-{name}", extra=options)

    host.options = options
    return host


@pytest.fixture(scope="module")
def pair(cluster, tmp_path_factory) -> Iterator[tuple[Mount, Mount]]:
    """Two hosts of one fabric, shared by the tests below (each uses its own names): two
    mounts cost ~10 s to start and stop. Checked as conftest checks mounts: no traceback
    in either daemon's log, and `qfsmount --check` clean on the shared backends."""
    base = tmp_path_factory.mktemp("pair")
    options = ["--config", str(config_file(base, fresh_backends(cluster))),
               "--key-file", str(base / "shared.key")]
    mounts = (Mount(base / "mnt-a", base / "data-a", options),
              Mount(base / "mnt-b", base / "data-b", options))
    try:
        for m in mounts:
            m.start()
        yield mounts
    finally:
        for m in mounts:
            m.stop()
    for m in mounts:
        assert "Traceback" not in m.daemon_log(), m.daemon_log()
    assert offline_check(options, mounts[0].data) == []


def offline_check(options: list[str], data: Path, repair: bool = False) -> list[dict]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        qfsmount_main(["--check", "--data", str(data), *options,
                       *(["--repair"] if repair else [])])
    return [json.loads(line) for line in out.getvalue().splitlines()]


def eventually(predicate, within: float) -> float:
    """Seconds until predicate() held; fails after `within`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.02)
    return time.monotonic() - started


def found(mount, query: str) -> list[str]:
    try:
        return sorted(os.listdir(mount.root / "search" / query))
    except OSError:  # EBUSY while the index catches up
        return []


def exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.fuse
def test_a_mount_on_postgresql_and_s3_keeps_circuits_and_checkpoints(hosts, shared, tmp_path):
    a = hosts("a")
    source = tmp_path / "bell.qasm"
    source.write_text(BELL)
    subprocess.run(["cp", str(source), str(a.circuits / "bell.qasm")], check=True)
    cat = subprocess.run(["cat", str(a.circuits / "bell" / "v1.qasm")], check=True,
                         capture_output=True, text=True)
    assert cat.stdout == BELL
    a.write_circuit("prep", ENTANGLED)
    command(a.qubits / "ctl", "alloc 3 task=t topology=linear")
    command(a.qubits / "tasks" / "t" / "ctl", "apply prep")
    command(a.qubits / "tasks" / "t" / "ctl", "checkpoint c1 format=statevector")
    command(a.qubits / "ctl", "alloc 3 task=u topology=linear")
    command(a.qubits / "tasks" / "u" / "ctl", "restore c1")
    state = json.loads((a.qubits / "tasks" / "u" / "state.json").read_text())
    assert state["live"]["restored"]["fidelity"] > 1 - 1e-12
    health = json.loads((a.root / ".qfs" / "health").read_text())["components"]
    assert health["lmdb"]["status"] == health["state_store"]["status"] == "healthy", health
    # Nothing local: the LMDB file and the blob directory were never made.
    assert not (a.data / "meta.lmdb").exists() and not (a.data / "blobs").exists()
    a.stop()
    from levels.store.s3 import S3BlobStore

    # A crash between a blob's put and its record leaves an orphan: found, then removed.
    orphan = S3BlobStore(shared["endpoint"], shared["bucket"]).put(b"half a checkpoint")
    found = offline_check(hosts.options, a.data, repair=True)
    assert [(f["kind"], f["subject"], f["repaired"]) for f in found] == [
        ("orphan_blob", orphan, True)]
    assert offline_check(hosts.options, a.data) == []


def cluster_sh(cluster: dict[str, str], action: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "cluster.sh"), action], check=True,
                   env=dict(os.environ, QFS_CLUSTER_DIR=cluster["QFS_CLUSTER_DIR"]),
                   capture_output=True, timeout=120)


@pytest.mark.fuse
def test_postgresql_stopped_fails_requests_with_eio_and_recovers_without_remount(
        hosts, cluster):
    a = hosts("a")
    a.write_circuit("before", BELL)
    cluster_sh(cluster, "pg-stop")
    try:
        with pytest.raises(OSError) as caught:
            os.listdir(a.circuits)
        assert caught.value.errno == errno.EIO
        with pytest.raises(OSError) as caught:
            a.write_circuit("during", GHZ3)
        health = json.loads((a.root / ".qfs" / "health").read_text())
        assert health["status"] == "unhealthy"
        assert "metadata store unreachable" in health["components"]["lmdb"]["detail"]
        assert "metadata store unreachable" in (a.root / ".qfs" / "log").read_text()
    finally:
        cluster_sh(cluster, "pg-start")

    def listing() -> list[str]:
        try:
            return os.listdir(a.circuits)
        except OSError:
            return []

    eventually(lambda: "before" in listing(), within=30)
    assert "during" not in listing()  # nothing half-written
    a.write_circuit("after", GHZ3)
    assert (a.circuits / "after" / "v1.qasm").read_text() == GHZ3


def _task_with_checkpoint_c1(host: Mount) -> tuple[Path, bytes]:
    """Task t holding an entangled state, checkpointed as c1: its ctl and c1's bytes."""
    host.write_circuit("prep", ENTANGLED)
    command(host.qubits / "ctl", "alloc 3 task=t topology=linear")
    ctl = host.qubits / "tasks" / "t" / "ctl"
    command(ctl, "apply prep")
    command(ctl, "checkpoint c1 format=statevector")
    return ctl, (host.root / "states" / "c1" / "statevector.npy").read_bytes()


@pytest.mark.fuse
def test_s3_stopped_fails_a_checkpoint_with_eio_and_cached_reads_go_on(hosts, cluster):
    a = hosts("a")
    ctl, saved = _task_with_checkpoint_c1(a)
    cluster_sh(cluster, "s3-stop")
    try:
        assert refused(ctl, "checkpoint c2 format=statevector") == errno.EIO
        assert "blob store unreachable: S3 at" in (a.root / ".qfs" / "log").read_text()
        assert not exists(a.root / "states" / "c2")  # no record without its blob
        assert (a.root / "states" / "c1" / "statevector.npy").read_bytes() == saved
        a.write_circuit("meanwhile", GHZ3)  # circuits need only PostgreSQL
    finally:
        cluster_sh(cluster, "s3-start")
    command(ctl, "checkpoint c2 format=statevector")
    assert exists(a.root / "states" / "c2")


@pytest.mark.fuse
def test_an_s3_server_error_fails_a_checkpoint_with_eio_and_its_reason(hosts, cluster):
    """A server that answers 500 (here SeaweedFS on a disk it takes for full: every volume
    read-only) is a failing backend, said in one line, not an unexpected error (the
    fixture fails a test whose daemon logged a traceback)."""
    a = hosts("a")
    ctl, saved = _task_with_checkpoint_c1(a)
    cluster_sh(cluster, "s3-full")
    try:
        assert refused(ctl, "checkpoint c2 format=statevector") == errno.EIO
        log = (a.root / ".qfs" / "log").read_text()
        assert "blob store failing: S3 at" in log and "(HTTP 500)" in log
        assert not exists(a.root / "states" / "c2")  # no record without its blob
        assert (a.root / "states" / "c1" / "statevector.npy").read_bytes() == saved
    finally:
        cluster_sh(cluster, "s3-stop")
        cluster_sh(cluster, "s3-start")
    command(ctl, "checkpoint c2 format=statevector")
    assert exists(a.root / "states" / "c2")


def test_an_unreachable_server_stops_the_mount_with_one_line(tmp_path):
    config = config_file(tmp_path, {"dsn": "postgresql://qfs@127.0.0.1:1/qfs",
                                    "endpoint": "http://127.0.0.1:1", "bucket": "b"})
    (tmp_path / "mnt").mkdir()
    done = subprocess.run([*QFSMOUNT, str(tmp_path / "mnt"), "--data", str(tmp_path / "d"),
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "metadata store unreachable: PostgreSQL at 127.0.0.1:1" in lines[0]


@pytest.mark.fuse
def test_two_hosts_share_one_fabric(pair):
    a, b = pair
    a.write_circuit("ghz", GHZ3)
    lag = eventually(lambda: "ghz" in os.listdir(b.circuits), within=1.0)
    assert (b.circuits / "ghz" / "v1.qasm").read_text() == GHZ3
    (a.circuits / "ghz" / "meta.json").write_text(json.dumps(
        {"description": "shared by two hosts"}))
    eventually(lambda: found(b, '"two hosts"') == ["ghz"], within=2.0)  # B's own index
    a.write_circuit("ghz", BELL)  # a second version on A: B reads it, not a cached v1
    eventually(lambda: exists(b.circuits / "ghz" / "v2.qasm"), within=1.0)
    assert (b.circuits / "ghz" / "v2.qasm").read_text() == BELL
    subprocess.run(["rm", "-r", str(a.circuits / "ghz")], check=True)
    eventually(lambda: not exists(b.circuits / "ghz") and
               "ghz" not in os.listdir(b.circuits), within=1.0)
    # A checkpoint sealed on A restores on B.
    a.write_circuit("prep", ENTANGLED)
    command(a.qubits / "ctl", "alloc 3 task=ta topology=linear")
    command(a.qubits / "tasks" / "ta" / "ctl", "apply prep")
    command(a.qubits / "tasks" / "ta" / "ctl", "checkpoint shared1 format=statevector")
    eventually(lambda: exists(b.root / "states" / "shared1"), within=1.0)
    command(b.qubits / "ctl", "alloc 3 task=tb topology=linear")
    command(b.qubits / "tasks" / "tb" / "ctl", "restore shared1")
    state = json.loads((b.qubits / "tasks" / "tb" / "state.json").read_text())
    assert state["live"]["restored"]["fidelity"] > 1 - 1e-12
    assert not set(state["qubits"]) & set(json.loads(
        (a.qubits / "tasks" / "ta" / "state.json").read_text())["qubits"])
    # B sees A's task, but its live state is on A: a command there is refused, naming A.
    assert refused(b.qubits / "tasks" / "ta" / "ctl", "reset") == errno.EBUSY
    assert "task ta lives on host " in (b.root / ".qfs" / "log").read_text()
    # So is any other way in: its qubits' ctl (release, a trigger) and /qubits/ctl release.
    held = json.loads((a.qubits / "tasks" / "ta" / "state.json").read_text())["qubits"][0]
    for ctl, line in ((b.qubits / held / "ctl", "release"),
                      (b.qubits / held / "ctl", f"on 1 do x {held}"),
                      (b.qubits / held / "ctl", "off all"), (b.qubits / "ctl", "release task=ta")):
        assert refused(ctl, line) == errno.EBUSY, line
    assert len(json.loads((a.qubits / "tasks" / "ta" / "state.json").read_text())["qubits"]) == 3
    seen_on_b = json.loads((b.qubits / "tasks" / "ta" / "state.json").read_text())
    assert seen_on_b["live"]["state"].startswith(f"on host {seen_on_b['host']} ")
    command(a.qubits / "tasks" / "ta" / "ctl", "reset")
    assert lag < 1.0


@pytest.mark.fuse
def test_allocation_is_exclusive_across_hosts(pair):
    """2 hosts x 8 allocators at once, all wanting the device's best qubits; then the
    isolation buffers of a task on A hold against allocations on B."""
    a, b = pair
    errors: list[BaseException] = []

    def allocate(host, name: str) -> None:
        try:
            command(host.qubits / "ctl", f"alloc 3 task={name} topology=linear")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(h, f"{tag}{i}"))
               for i in range(8) for h, tag in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    names = [f"{tag}{i}" for i in range(8) for tag in "ab"]
    eventually(lambda: all(exists(h.qubits / "tasks" / n) for n in names for h in (a, b)),
               within=1.0)
    seen: dict[str, str] = {}
    for name in names:
        for q in json.loads((a.qubits / "tasks" / name / "state.json").read_text())["qubits"]:
            assert q not in seen, f"{q} given to {seen.get(q)} and {name}"
            seen[q] = name
    assert len(seen) == 48
    b_view = json.loads((b.qubits / "tasks" / "a0" / "state.json").read_text())["qubits"]
    assert b_view == [q for q, n in seen.items() if n == "a0"]
    command(a.qubits / "ctl", "alloc 2 task=iso topology=linear isolate=spatial")
    buffers = json.loads((a.qubits / "tasks" / "iso" / "state.json").read_text())["buffers"]
    assert buffers
    for q in buffers:
        assert refused(b.qubits / q / "ctl", f"alloc task=in{q}") == errno.EBUSY


@pytest.mark.fuse
def test_a_circuit_replaced_on_one_host_is_never_served_stale_on_the_other(pair):
    """B read v1 of `x` (the kernel caches versions: they are immutable); A removes `x` and
    writes a new `x` whose v1 differs: B must read the new v1, not its cached pages."""
    a, b = pair
    a.write_circuit("x", BELL)
    eventually(lambda: exists(b.circuits / "x" / "v1.qasm"), within=1.0)
    with open(b.circuits / "x" / "v1.qasm") as held:  # B keeps the old inode in use
        assert held.read() == BELL
        subprocess.run(["rm", "-r", str(a.circuits / "x")], check=True)
        a.write_circuit("x", GHZ3)
        eventually(lambda: exists(b.circuits / "x" / "v1.qasm") and
                   (b.circuits / "x" / "v1.qasm").read_text() == GHZ3, within=1.0)


@pytest.mark.fuse
def test_a_host_whose_missed_changes_were_trimmed_drops_every_circuit_it_kept(hosts, shared):
    """B's kernel keeps a circuit's directory for 60 s. B is stopped while A removes `x`
    and the change is trimmed from the feed: once back, B hears only that it missed
    changes, and must drop every circuit it keeps rather than show `x` for a minute."""
    import signal

    a, b = hosts("a"), hosts("b")
    a.write_circuit("x", BELL)
    kept = b.circuits / "x"
    eventually(lambda: exists(kept / "latest.qasm"), within=5)
    time.sleep(1.0)  # B's feed has delivered x's own changes (each drops x's entry)
    assert exists(kept)  # B's kernel keeps x now
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)  # nothing may touch B's mount until SIGCONT
    try:
        subprocess.run(["rm", "-r", str(a.circuits / "x")], check=True)
        store = pg_store(shared["dsn"], "trimmer")
        store.trim_changes(0)
        store.close()
        a.write_circuit("z", BELL)  # a later change: B sees the gap before it
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    eventually(lambda: not exists(kept), within=5)


# -- runs on a Dask cluster --------------------------------------------------------------

@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask")
    dask = str(ROOT / ".venv" / "bin" / "dask")
    processes = [subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"], stdout=open(logs / "scheduler.log", "wb"),
        stderr=subprocess.STDOUT)]
    try:
        eventually(lambda: _listening(port), within=60)
        for i in range(2):
            processes.append(subprocess.Popen(
                [dask, "worker", f"tcp://{address}", "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--name", f"w{i}"], cwd=ROOT,
                stdout=open(logs / f"worker{i}.log", "wb"), stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(f"tcp://{address}", timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.fuse
def test_runs_on_a_dask_cluster_give_the_local_counts(mount_factory, dask_cluster, tmp_path):
    settings = tmp_path / "dask.yaml"
    settings.write_text(json.dumps({"live_qubit_mgr": {"executor": f"dask://{dask_cluster}"}}))
    on_dask = mount_factory(data=tmp_path / "data-dask", extra=["--config", str(settings)])
    local = mount_factory(data=tmp_path / "data-local")
    counts = []
    for mount in (on_dask, local):
        mount.write_circuit("ghz", GHZ3)
        command(mount.qubits / "ctl", "alloc 3 task=g topology=linear")
        command(mount.qubits / "tasks" / "g" / "ctl", "run ghz shots=3000 seed=11")
        counts.append(json.loads(
            (mount.qubits / "tasks" / "g" / "result.json").read_text())["counts"])
    assert counts[0] == counts[1]
    assert {"000", "111"} <= set(counts[0])  # noisy (the device's calibration) and seeded
    from distributed import Client

    with Client(f"tcp://{dask_cluster}", timeout=30) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert "run" in ran  # levels.execution.run went to the cluster


@pytest.mark.fuse
def test_a_host_killed_mid_write_leaves_no_partial_version(hosts, shared, tmp_path):
    """kill -9 of host A while it writes circuits: host B sees only whole versions, and
    `--check --repair` on the shared backends then finds nothing."""
    a, b = hosts("a"), hosts("b")
    source = tmp_path / "src"
    source.mkdir()
    program = GHZ3 + "".join(f"rz(0.{i}) q[{i % 3}];\n" for i in range(1, 400))
    names = [f"k{i:04d}.qasm" for i in range(400)]
    for name in names:
        (source / name).write_text(program)
    writer = subprocess.Popen(["cp", "-t", str(a.circuits), *names], cwd=source,
                              stderr=subprocess.DEVNULL)
    eventually(lambda: len(os.listdir(b.circuits)) >= 5, within=30)
    a.proc.kill()  # kill -9 of the daemon, mid-cp
    a.proc.wait()
    writer.wait()
    a.stop()
    listed = os.listdir(b.circuits)
    assert 0 < len(listed) < len(names)
    for name in listed:
        assert (b.circuits / name / "v1.qasm").read_text() == program
        assert not exists(b.circuits / name / "v2.qasm")
    # Offline, as fsck is: a mounted host's indexer may still be adding what the change
    # feed brought while the check rebuilds the same index (the index then held both).
    b.stop()
    offline_check(hosts.options, b.data, repair=True)
    assert offline_check(hosts.options, b.data) == []


@pytest.mark.parametrize("dsn", ["postgresql://qfs:hunter2@db:5432/qfs",
                                 "host=db user=qfs password=hunter2 dbname=qfs",
                                 "host=db password='hunter2 x' dbname=qfs"])
def test_the_metadata_dsn_password_never_shows_in_qfs_config(dsn):
    from levels.config import load_config

    shown = load_config(environ={"QFS_METADATA_DSN": dsn}).effective()
    value = shown["cross_level"]["metadata_dsn"]["value"]
    assert "hunter2" not in json.dumps(shown) and "***" in value and "db" in value


def test_the_change_feed_skips_its_own_host_and_says_when_it_missed_changes(shared):
    from levels.store.feed import ChangeFeed

    a, b = pg_store(shared["dsn"], "host-a"), pg_store(shared["dsn"], "host-b")
    feed = ChangeFeed(b)
    heard: list = []
    feed.subscribe(heard.append)
    feed.start()
    try:
        with b.writing() as txn:  # B's own change: B's caches are right already
            txn.put("names", b"mine", b"1")
        with a.writing() as txn:
            txn.put("circuits", b"x", b"{}")
            txn.delete("circuits", b"x")
        eventually(lambda: len(heard) >= 2, within=1.0)
        assert heard == [("circuits", b"x"), ("circuits", b"x")]
    finally:
        feed.close()
    heard.clear()
    with a.writing() as txn:  # made while B was away, then trimmed before B is back
        txn.put("circuits", b"y", b"{}")
    a.trim_changes(0)
    with a.writing() as txn:
        txn.put("circuits", b"z", b"{}")
    feed._deliver()  # what the feed does when it is back
    assert heard == [None, ("circuits", b"z")]
    a.close()
    b.close()


@pytest.mark.fuse
def test_a_workflow_is_resumed_cancelled_and_rewritten_only_where_it_runs(pair):
    """B sees A's running workflow but may not resume, cancel or rewrite it: its task's
    live state is on A (a resume from B fought A for the task and failed both runs)."""
    from tests.test_coordinator import wait_status, write_workflow

    a, b = pair
    a.write_circuit("ghz", GHZ3)
    definition = ("stages:\n  - {circuit: ghz, name: first}\n"
                  "  - {circuit: ghz, name: wait, delay: 600}\n")
    write_workflow(a, "w", definition)
    eventually(lambda: "first done" in (a.root / "workflows" / "w" / "status").read_text(),
               within=30.0)
    eventually(lambda: exists(b.root / "workflows" / "w" / "ctl"), within=2.0)
    for line in ("resume", "cancel"):
        assert refused(b.root / "workflows" / "w" / "ctl", line) == errno.EBUSY, line
    with pytest.raises(OSError) as caught:
        write_workflow(b, "w", definition)
    assert caught.value.errno == errno.EBUSY
    assert "workflow w runs on host " in (b.root / ".qfs" / "log").read_text()
    command(a.root / "workflows" / "w" / "ctl", "cancel")
    assert wait_status(a, "w", ("cancelled",)).startswith("cancelled")
