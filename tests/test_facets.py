"""Structured search (tags, gates, qubits, depth) answered from the facets index: each query
class gives what a brute-force scan of the circuits through the mount gives, across writes,
renames, deletes and rebuilds; `qfsmount --check` finds and repairs a damaged index."""

import json
import os
import subprocess

import pytest
import trio

from levels import facets
from levels.store.meta import LmdbMetaStore
from tests.conftest import QFSMOUNT

pytestmark = pytest.mark.fuse

EXTRA = {2: "", 3: "ccx q[0],q[1],q[2];\n", 4: "swap q[0],q[3];\n", 5: "t q[4];\nt q[1];\n"}
TAGS = [["X"], ["x", "noisy"], [], ["Error correction"], ["noisy"]]


def program(qubits: int, layers: int) -> str:
    body = "".join(f"h q[{i % qubits}];\ncx q[0],q[1];\n" for i in range(layers))
    return (f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{qubits}];\ncreg c[{qubits}];\n'
            f"{body}{EXTRA[qubits]}measure q -> c;\n")


def populate(qfs, count: int) -> None:
    for i in range(count):
        qubits = 2 + i % 4
        circuit = qfs.write_circuit(f"c{i:03d}", program(qubits, 1 + i % 3))
        (circuit / "meta.json").write_text(json.dumps({"tags": TAGS[i % len(TAGS)]}))


def scan(qfs) -> dict[str, dict]:
    """What every circuit holds, read file by file through the mount (no index involved)."""
    out = {}
    for name in os.listdir(qfs.circuits):
        stats = json.loads((qfs.circuits / name / "stats.json").read_text())["versions"][-1]
        meta = json.loads((qfs.circuits / name / "meta.json").read_text())
        out[name] = {"tags": {t.lower() for t in meta["tags"]}, "gates": set(stats["gate_counts"]),
                     "qubits": stats["num_qubits"], "depth": stats["depth"]}
    return out


QUERIES = {  # query -> the same condition over one circuit's scanned fields
    "tag:x": lambda c: "x" in c["tags"],
    'tag:"error correction"': lambda c: "error correction" in c["tags"],
    "gate:cx qubits:5": lambda c: "cx" in c["gates"] and c["qubits"] == 5,
    "gate:CCX": lambda c: "ccx" in c["gates"],
    "qubits:[2 TO 4]": lambda c: 2 <= c["qubits"] <= 4,
    "qubits:{2 TO 4}": lambda c: 2 < c["qubits"] < 4,
    "qubits:>3": lambda c: c["qubits"] > 3,
    "depth:<4": lambda c: c["depth"] < 4,
    "NOT tag:noisy": lambda c: "noisy" not in c["tags"],
    "tag:noisy OR gate:swap": lambda c: "noisy" in c["tags"] or "swap" in c["gates"],
    "gate:t NOT tag:x": lambda c: "t" in c["gates"] and "x" not in c["tags"],
    "qubits:[3 TO 5] AND (tag:x OR tag:noisy)":
        lambda c: 3 <= c["qubits"] <= 5 and bool(c["tags"] & {"x", "noisy"}),
    "name:c007": lambda c: False,  # filled in per scan
}


def assert_matches_scan(qfs) -> None:
    circuits = scan(qfs)
    for query, condition in QUERIES.items():
        if query.startswith("name:"):
            expected = sorted(n for n in circuits if n == query[5:])
        else:
            expected = sorted(n for n, c in circuits.items() if condition(c))
        assert sorted(os.listdir(qfs.root / "search" / query)) == expected, query


def test_structured_queries_equal_a_scan_through_writes_renames_and_deletes(qfs):
    populate(qfs, 24)
    assert_matches_scan(qfs)
    os.rename(qfs.circuits / "c007", qfs.circuits / "renamed")
    subprocess.run(["rm", "-r", str(qfs.circuits / "c005")], check=True)
    (qfs.circuits / "c001" / "meta.json").write_text(json.dumps({"tags": ["x"]}))
    (qfs.circuits / "c002" / "latest.qasm").write_text(program(5, 2))  # a new version
    qfs.write_circuit("c007", program(3, 1))  # the old name again, another circuit
    assert_matches_scan(qfs)
    # Until now every circuit holds cx, and `gate:cx` is answered without reading it.
    qfs.write_circuit("solo", 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[5];\n'
                              'creg c[5];\nh q[0];\nmeasure q -> c;\n')
    assert_matches_scan(qfs)


def test_the_index_is_empty_again_when_every_circuit_is_gone(qfs):
    populate(qfs, 3)
    for name in os.listdir(qfs.circuits):
        subprocess.run(["rm", "-r", str(qfs.circuits / name)], check=True)
    assert os.listdir(qfs.root / "search" / "NOT tag:x") == []
    assert os.listdir(qfs.root / "search" / "qubits:[0 TO 9]") == []
    # the fixture's offline --check then compares the index with no circuits


def test_a_structured_query_finds_a_circuit_the_moment_it_is_written(qfs):
    for i in range(5):
        qfs.write_circuit(f"fresh{i}", program(4, 1))
        assert f"fresh{i}" in os.listdir(qfs.root / "search" / f"qubits:4 name:fresh{i}")


def run_check(data, *extra) -> tuple[int, list[dict]]:
    done = subprocess.run([*QFSMOUNT, "--check", "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line]


@pytest.mark.damages_data
def test_check_finds_and_repairs_a_damaged_facets_index(mount_factory):
    qfs = mount_factory()
    populate(qfs, 8)
    qfs.stop()
    store = LmdbMetaStore(qfs.data / "meta.lmdb", 1024)
    with store.writing() as txn:
        txn.delete(facets.TABLE, facets.term_prefix("qubits", 2) + b"c000")
        txn.put(facets.TABLE, facets.term_prefix("gates", "swap") + b"c001", b"")
    store.close()
    status, findings = run_check(qfs.data)
    assert status != 0
    assert [f["kind"] for f in findings] == ["facets_mismatch"]
    assert "missing posting/qubits/2/c000" in findings[0]["detail"]
    assert "extra posting/gates/swap/c001" in findings[0]["detail"]
    assert run_check(qfs.data, "--repair")[1][0]["repaired"]
    assert run_check(qfs.data) == (0, [])
    again = mount_factory(data=qfs.data)
    assert_matches_scan(again)


def test_a_data_directory_without_the_facets_index_gets_one_at_mount(mount_factory):
    qfs = mount_factory()
    populate(qfs, 8)
    qfs.stop()
    store = LmdbMetaStore(qfs.data / "meta.lmdb", 1024)
    with store.writing() as txn:  # as a data directory written before the index existed
        for key in [k for k, _ in txn.scan(facets.TABLE)]:
            txn.delete(facets.TABLE, key)
    store.close()
    again = mount_factory(data=qfs.data)
    assert_matches_scan(again)


def test_a_range_over_many_values_lists_what_a_scan_finds(tmp_path):
    """More values in a range than facetquery.MERGED_VALUES: names are listed and each
    one's value read, instead of a merge of one posting list per value (in process: a
    collection of that many depths through the mount would take minutes to write)."""
    from levels import facetquery
    from levels.config import load_config
    from levels.fabric import Fabric

    fabric = Fabric(tmp_path / "data", load_config())
    try:
        depths = {}
        for i in range(facetquery.MERGED_VALUES + 20):
            name = f"d{i:03d}"
            source = program(2, 1 + i)  # depth grows with the layers
            fabric.circuits.commit_version(name, trio.run(fabric.circuits.prepare_version,
                                                          source.encode()), create=True)
            depths[name] = fabric.circuits.get(name).latest.stats["depth"]
        assert len(set(depths.values())) > facetquery.MERGED_VALUES
        for query, inside in (("depth:>5", lambda d: d > 5), ("depth:[10 TO 60]",
                                                              lambda d: 10 <= d <= 60),
                              ("depth:>5 NOT depth:[20 TO 30]",
                               lambda d: d > 5 and not 20 <= d <= 30)):
            assert fabric.search.search(query) == sorted(n for n, d in depths.items()
                                                         if inside(d)), query
    finally:
        fabric.close()
