"""Level 3 without FUSE: the store, the parsers and the index, on a real LMDB and Whoosh."""

import pytest
import trio

from levels.circuits import CircuitStore, parse_meta, validate_name
from levels.config import load_config
from levels.errors import Exists, Invalid, NameTooLong, NotEmpty, NotFound
from levels.fabric import Fabric
from levels.qasm import parse_program, qasm_major_version
from levels.similar import ShapeIndex
from tests.conftest import BELL, GHZ3


@pytest.fixture
def fabric(tmp_path):
    f = Fabric(tmp_path / "data", load_config(environ={"QFS_MAX_VERSIONS": "2"}))
    yield f
    f.close()


def prepare(store: CircuitStore, text: str):
    return trio.run(store.prepare_version, text.encode())


def test_version_line_chooses_the_parser():
    assert qasm_major_version(b"// c\n/* x */ OPENQASM 2.0;\n") == 2
    assert qasm_major_version(b"OPENQASM 3;\n") == 3
    assert qasm_major_version(b"qubit q;\n") == 3
    legacy = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[3];\nsx q[0];\ncswap q[0],q[1],q[2];\n"
    assert parse_program(legacy.encode()).count_ops() == {"sx": 1, "cswap": 1}


@pytest.mark.parametrize("bad", [b"", b"\xff\xfe", b"OPENQASM 2.0;\nqreg q[1];\nfoo q[0];\n",
                                 b"OPENQASM 3.0;\nqubit q;\nnot_a_gate q;\n"])
def test_invalid_programs_are_refused(bad):
    with pytest.raises(Invalid):
        parse_program(bad)


def test_names():
    validate_name("bell_2.v3+x@y=z-w")
    for bad in ("", ".hidden", "-x", "a b", "a/b", "é"):
        with pytest.raises(Invalid):
            validate_name(bad)
    with pytest.raises(NameTooLong):
        validate_name("x" * 201)


def test_versions_retention_and_dedup(fabric):
    store = fabric.circuits
    assert store.commit_version("bell", prepare(store, BELL), create=True) == 1
    assert store.commit_version("bell", prepare(store, BELL)) == 1
    assert store.commit_version("bell", prepare(store, GHZ3)) == 2
    assert store.commit_version("bell", prepare(store, BELL)) == 3
    circuit = store.get("bell")
    assert [v.n for v in circuit.versions] == [2, 3]
    assert store.source("bell") == BELL.encode()
    with pytest.raises(NotFound):
        store.source("bell", 1)
    with pytest.raises(NotFound):
        store.commit_version("absent", prepare(store, BELL))


def test_rename_delete_and_results(fabric):
    store = fabric.circuits
    store.commit_version("a", prepare(store, BELL), create=True)
    store.create("b")
    with pytest.raises(Exists):
        store.rename("a", "b")
    store.rename("a", "c")
    assert store.source("c") == BELL.encode()
    store.put_result("c", "r1.json", b'{"counts": {}}')
    with pytest.raises(Invalid):
        store.put_result("c", "r2.json", b"{")
    with pytest.raises(NotEmpty):
        store.delete("c")
    store.delete_result("c", "r1.json")
    store.delete("c")
    assert [n for n, _ in store.names_with_mtime()] == ["b"]


def test_the_circuit_listing_is_read_again_only_after_a_change(fabric):
    store = fabric.circuits
    store.create("a")
    first = store.names_with_mtime()
    assert store.names_with_mtime() is first  # the same store snapshot: the same list
    store.create("b")
    assert [n for n, _ in store.names_with_mtime()] == ["a", "b"]
    store.delete("a")
    assert [n for n, _ in store.names_with_mtime()] == ["b"]


def test_meta_validation():
    assert parse_meta(b'{"author": "a", "created": "ignored"}') == {"author": "a"}
    for bad in (b"[]", b'{"x": 1}', b'{"tags": [""]}', b'{"parameters": []}', b"{"):
        with pytest.raises(Invalid):
            parse_meta(bad)


def test_search_sees_every_change_before_it(fabric):
    store = fabric.circuits
    store.commit_version("bell", prepare(store, BELL), create=True)
    store.commit_version("ghz", prepare(store, GHZ3), create=True)
    store.update_meta("ghz", lambda m: {**m, "tags": ["entanglement"]})
    assert fabric.search.search("tag:entanglement") == ["ghz"]
    assert sorted(fabric.search.search("gate:cx")) == ["bell", "ghz"]
    store.rename("ghz", "ghz3")
    assert fabric.search.search("tag:entanglement") == ["ghz3"]
    for bad in ("qubits:[1 TO", "colour:red", '"open'):
        with pytest.raises(Invalid):
            fabric.search.search(bad)


def test_similarity_prefers_same_shape():
    bell = {"gate_counts": {"h": 1, "cx": 1, "measure": 2}, "num_qubits": 2, "depth": 3}
    index = ShapeIndex([
        ("bell", dict(bell)),
        ("xs", {"gate_counts": {"x": 40}, "num_qubits": 20, "depth": 2}),
        ("twin", dict(bell)),
        ("ghz", {"gate_counts": {"h": 1, "cx": 2, "measure": 3}, "num_qubits": 3, "depth": 4}),
        *((f"same{i}", dict(bell)) for i in range(12)),
    ])
    ranked = index.rank(bell, limit=3, exclude="bell")
    assert [n for n, _ in ranked] == ["twin", "same0", "same1"]  # ties in candidates' order
    assert ranked[0][1] == pytest.approx(1.0)
    assert [n for n, _ in index.rank(bell, limit=1, exclude="bell")] == ["twin"]
    assert [n for n, _ in index.rank(bell, limit=30)][-3:] == ["same11", "ghz", "xs"]
    assert index.kept("bell", 3) is None
    assert index.rank_kept("bell", bell, 3) == ranked
    assert index.kept("bell", 3) == ranked and index.kept("bell", 2) is None
    assert ShapeIndex([]).rank(bell, limit=3) == []


def test_answers_kept_for_the_same_data_are_given_without_a_worker(fabric):
    """What a lookup takes without a thread: a ranking made for this data, comparisons
    made already; a commit makes the kept ranking stale."""
    store = fabric.circuits
    store.commit_version("bell", prepare(store, BELL), create=True)
    store.commit_version("ghz", prepare(store, GHZ3), create=True)
    assert store.similar_kept("bell", 5) is None
    ranked = store.similar_to("bell", 5)
    assert [n for n, _ in ranked] == ["ghz"] and store.similar_kept("bell", 5) == ranked
    store.commit_version("twin", prepare(store, BELL + "// twin\n"), create=True)
    assert store.similar_kept("bell", 5) is None
    assert [n for n, _ in store.similar_to("bell", 5)] == ["twin", "ghz"]
    store.commit_version("bell", prepare(store, BELL.replace("measure", "x q[1];\nmeasure")))
    assert store.compared_history("bell") is None  # v2 against v1 not compared yet
    history = store.history("bell")
    assert history[1] is None and history[2] is False
    assert store.compared_history("bell") == history



def test_a_kept_ranking_outlives_commits_that_change_no_circuit(fabric):
    """The ranking of similar/ is kept until a circuit changes, not until the store does:
    a note that a view cannot be made, or any other table's commit (a ctl command), left a
    walk rebuilding the shape index once per circuit."""
    store = fabric.circuits
    dynamic = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
               'c[0] = measure q[0];\nif (c[0]) x q[1];\nc[1] = measure q[1];\n')
    store.commit_version("bell", prepare(store, BELL), create=True)
    store.commit_version("dynamic", prepare(store, dynamic), create=True)
    ranked = store.similar_to("bell", 5)
    with pytest.raises(Invalid):  # OpenQASM 2 cannot hold it: the reason is noted
        store.view("dynamic", 1, "qasm2")
    assert "qasm2" in store.get("dynamic").version(1).stats["unavailable_views"]
    with fabric.meta.writing() as txn:
        txn.put("settings", b"unrelated", b"1")
    assert store.similar_kept("bell", 5) == ranked
    store.commit_version("twin", prepare(store, BELL + "// twin\n"), create=True)
    assert store.similar_kept("bell", 5) is None

def test_empty_index_searches_and_reopens(tmp_path):
    first = Fabric(tmp_path / "d", load_config())
    assert first.search.search("anything") == []
    first.close()
    second = Fabric(tmp_path / "d", load_config())
    assert second.search.search("qubits:[1 TO 5]") == []
    second.close()


def test_the_reference_configuration_schema_loads(tmp_path):
    """Every key of the reference's default qfs.yaml is accepted (most are not used here)."""
    config = tmp_path / "qfs.yaml"
    config.write_text("""quantum_data_fabric:
  circuit_fs:
    storage_backend: "s3"
    s3_endpoint: "http://localhost:9000"
    s3_bucket: "circuits"
    indexing_enabled: true
    index_types: ["text", "semantic", "metadata"]
    versioning_enabled: true
    max_versions_per_artifact: 10
    retention_policy: "7d"
  state_store:
    storage_backend: "local_ssd"
    storage_path: ""
    default_serialization_format: "tensor_network"
    compression_enabled: true
    compression_level: "balanced"
    encryption_enabled: true
    encryption_algorithm: "AES-256-GCM"
    checkpoint_retention: "24h"
    max_checkpoint_size_mb: 1024
  live_qubit_mgr:
    allocation_strategy: "topology_noise_aware"
    feedforward_enabled: true
    feedforward_latency_target_ms: 10
    isolation_level: "spatial_temporal"
    calibration_interval: "1h"
    telemetry_collection_interval: "1s"
  cross_level:
    consistency_level: "strong"
    cache_enabled: true
    cache_size_mb: 512
    migration_enabled: true
    migration_fidelity_threshold: 0.95
  performance:
    max_concurrent_operations: 100
    io_threads: 4
    compression_threads: 2
    telemetry_buffer_size: 1000
""")
    loaded = load_config(config, environ={"QFS_CACHE_ENABLED": "false"})
    assert loaded.cross_level.migration_fidelity_threshold == 0.95
    shown = loaded.effective()["cross_level"]["cache_enabled"]
    assert (shown["value"], shown["from"]) == (False, "QFS_CACHE_ENABLED")
    assert "decoded states" in shown["controls"]
    for bad in ("cross_level:\n  cache_size_mb: lots\n", "nonsense:\n  x: 1\n",
                "state_store:\n  colour: red\n"):
        config.write_text(bad)
        with pytest.raises(Invalid):
            load_config(config, environ={})


def test_the_view_cache_is_bounded_by_bytes_not_by_a_count(fabric):
    """A tree walk over thousands of circuits renders each small view once: the cache
    keeps far more than 4,096 of them within its bytes, and drops the oldest past them."""
    views = fabric.circuits.caches()[1]
    for i in range(20_000):
        views.put((f"{i:064x}", f"circuit{i}", "qasm2"), b"x" * 100)
    assert all(views.peek((f"{i:064x}", f"circuit{i}", "qasm2")) for i in range(20_000))
    big = b"y" * (1 << 20)
    for i in range(2_000):  # 2 GiB: past any configured cache
        views.put(("big", str(i), "txt"), big)
    assert views.peek((f"{0:064x}", "circuit0", "qasm2")) is None
    assert views.peek(("big", "1999", "txt")) is big
