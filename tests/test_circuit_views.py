"""Reading circuits: format views, metadata, statistics, results, search, similarity."""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from qiskit import QuantumCircuit, qasm3, qpy
from qiskit.quantum_info import Operator

from tests.conftest import BELL, GHZ3

pytestmark = pytest.mark.fuse

DYNAMIC = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
c[0] = measure q[0];
if (c[0]) { x q[1]; }
c[1] = measure q[1];
"""


def _unitary_part(circuit: QuantumCircuit) -> Operator:
    return Operator(circuit.remove_final_measurements(inplace=False))


def test_qpy_view_loads_as_the_same_circuit(qfs):
    ghz = qfs.write_circuit("ghz", GHZ3)
    with open(ghz / "v1.qpy", "rb") as f:
        (loaded,) = qpy.load(f)
    reference = qasm3.loads(GHZ3)
    assert _unitary_part(loaded).equiv(_unitary_part(reference))
    assert loaded.count_ops() == reference.count_ops()


def test_qasm2_and_qasm3_views_round_trip(qfs):
    bell = qfs.write_circuit("bell")
    via2 = QuantumCircuit.from_qasm_str((bell / "v1.qasm2").read_text())
    via3 = qasm3.loads((bell / "v1.qasm3").read_text())
    original = QuantumCircuit.from_qasm_str(BELL)
    for circuit in (via2, via3):
        assert _unitary_part(circuit).equiv(_unitary_part(original))


def test_txt_view_is_the_text_drawing(qfs):
    bell = qfs.write_circuit("bell")
    drawing = (bell / "v1.txt").read_text()
    assert drawing == str(QuantumCircuit.from_qasm_str(BELL).draw(output="text")) + "\n"


def test_a_text_drawing_is_listed_before_it_is_drawn_and_its_size_is_exact_once_seen(qfs):
    drawing = (str(QuantumCircuit.from_qasm_str(BELL).draw(output="text")) + "\n").encode()
    listed = qfs.write_circuit("listed")
    assert "v1.txt" in os.listdir(listed)  # listed undrawn: the kernel holds no size yet
    fd = os.open(listed / "v1.txt", os.O_RDONLY)  # read with no stat first
    try:
        assert os.read(fd, 1 << 16) == drawing
    finally:
        os.close(fd)
    assert os.stat(listed / "v1.txt").st_size == len(drawing)
    spliced = qfs.write_circuit("spliced")
    os.listdir(spliced)
    source = os.open(spliced / "v1.txt", os.O_RDONLY)  # the kernel copies, with no stat
    target = os.open(qfs.root.parent / "spliced.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        assert os.sendfile(target, source, 0, 1 << 16) == len(drawing)
    finally:
        os.close(source)
        os.close(target)
    long_listed = qfs.write_circuit("long_listed")
    sizes = {line.split()[-1]: int(line.split()[4]) for line in subprocess.run(
        ["ls", "-l", str(long_listed)], check=True, capture_output=True,
        text=True).stdout.splitlines()[1:]}
    assert sizes["v1.txt"] == len(drawing)
    assert sizes["v1.qasm3"] == len((long_listed / "v1.qasm3").read_bytes())
    wide = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[1];\n" + "h q[0];\n" * 10_001
    big = qfs.write_circuit("big", wide)
    names = os.listdir(big)  # no drawing, yet every serialization
    assert {"v1.qasm", "v1.qpy", "v1.qasm2", "v1.qasm3"} <= set(names) and "v1.txt" not in names
    unavailable = json.loads((big / "stats.json").read_text())["versions"][0]["unavailable_views"]
    assert unavailable["txt"].startswith("too large to draw as text (10001 operations")
    with pytest.raises(OSError) as caught:
        (big / "v1.txt").read_bytes()
    assert caught.value.errno == errno.EFBIG
    assert "too large to draw as text (10001 operations" in (big / "errors").read_text()


def test_a_drawing_listed_again_after_it_left_the_cache_reads_whole(mount_factory, tmp_path):
    """With no view cache, every listing shows vN.txt unmeasured again, after the kernel
    has learned its size: a mapping and a descriptor opened before still read all of it."""
    config = tmp_path / "qfs.yaml"
    config.write_text("cross_level:\n  cache_enabled: false\n")
    qfs = mount_factory(extra=["--config", str(config)])
    drawing = (str(QuantumCircuit.from_qasm_str(BELL).draw(output="text")) + "\n").encode()
    bell = qfs.write_circuit("bell")
    assert os.stat(bell / "v1.txt").st_size == len(drawing)
    mapped = subprocess.run([sys.executable, "-c", f"""
import mmap, os
fd = os.open({str(bell / "v1.txt")!r}, os.O_RDONLY)
mapping = mmap.mmap(fd, {len(drawing)}, prot=mmap.PROT_READ)
os.listdir({str(bell)!r})
print(mapping[:].hex())
"""], capture_output=True, text=True)
    assert mapped.returncode == 0, mapped.stderr  # -7: SIGBUS, the mapping cut to nothing
    assert bytes.fromhex(mapped.stdout.strip()) == drawing
    source = os.open(bell / "v1.txt", os.O_RDONLY)
    target = os.open(tmp_path / "copied.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.listdir(bell)
        assert os.sendfile(target, source, 0, 1 << 16) == len(drawing)
    finally:
        os.close(source)
        os.close(target)
    assert (tmp_path / "copied.txt").read_bytes() == drawing


def test_view_sizes_are_exact(qfs):
    bell = qfs.write_circuit("bell")
    (bell / "latest.qasm").write_text(GHZ3)
    for name in os.listdir(bell):
        path = bell / name
        if path.is_file():
            assert os.stat(path).st_size == len(path.read_bytes()) or name == "errors", name


def test_qasm2_view_of_dynamic_circuit_is_refused(qfs):
    dyn = qfs.write_circuit("dyn", DYNAMIC)
    assert "v1.qasm3" in os.listdir(dyn)
    assert "v1.qasm2" not in os.listdir(dyn)
    with pytest.raises(OSError) as caught:
        os.stat(dyn / "v1.qasm2")
    assert caught.value.errno == errno.EINVAL
    assert "OpenQASM 2" in (dyn / "errors").read_text()


def test_stats_json(qfs):
    ghz = qfs.write_circuit("ghz", GHZ3)
    stats = json.loads((ghz / "stats.json").read_text())
    (v1,) = stats["versions"]
    assert v1["num_qubits"] == 3 and v1["num_clbits"] == 3
    assert v1["gate_counts"] == {"h": 1, "cx": 2, "measure": 3}
    assert v1["depth"] == 4
    assert v1["sha256"] == hashlib.sha256(GHZ3.encode()).hexdigest()


def test_meta_json_roundtrip_and_refusals(qfs):
    bell = qfs.write_circuit("bell")
    meta = bell / "meta.json"
    meta.write_text(json.dumps({"description": "Bell pair", "author": "alice",
                                "tags": ["entanglement"], "parameters": {"shots": 100}}))
    stored = json.loads(meta.read_text())
    assert stored["author"] == "alice" and stored["tags"] == ["entanglement"]
    created = stored["created"]
    for bad in ("{not json", "[1, 2]", '{"colour": "red"}', '{"tags": "x"}',
                '{"tags": ["error correction, surface"]}', '{"tags": [" padded"]}'):
        f = open(meta, "w")
        f.write(bad)
        with pytest.raises(OSError) as caught:
            f.close()
        assert caught.value.errno == errno.EINVAL, bad
    assert json.loads(meta.read_text()) == stored
    assert "colour" in (bell / "errors").read_text()
    assert json.loads(meta.read_text())["created"] == created


def test_meta_json_is_bounded_in_size_and_depth(qfs):
    """meta.json over 64 KiB is EFBIG with the limit in the reason, nested deeper than 32
    levels EINVAL (975 deep once closed fine and left the circuit's files EIO, 20,000 deep
    was EIO at close); the circuit keeps its metadata and answers at once."""
    bell = qfs.write_circuit("bell")
    meta = bell / "meta.json"
    meta.write_text(json.dumps({"description": "kept"}))
    kept = meta.read_text()
    deep = json.dumps({"parameters": {"p": "X"}}).replace('"X"', "[" * 974 + "]" * 974)
    bad = [(json.dumps({"description": "x" * 50_000_000}), errno.EFBIG, "at most 65536 bytes"),
           (deep, errno.EINVAL, "nests deeper than 32 levels"),
           ('{"parameters": ' + "[" * 20_000 + "]" * 20_000 + "}", errno.EINVAL, "deeper")]
    for text, code, reason in bad:
        with pytest.raises(OSError) as caught, open(meta, "w") as f:
            f.write(text)  # over the size: refused at write(); the others at close()
        assert caught.value.errno == code
        assert reason in (bell / "errors").read_text().splitlines()[-1]
    assert meta.read_text() == kept
    started = time.monotonic()
    assert len(os.listdir(bell)) > 5 and (bell / "latest.qasm").read_text() == BELL
    assert time.monotonic() - started < 1.0


def test_xattrs(qfs):
    bell = qfs.write_circuit("bell")
    os.setxattr(bell, "user.qfs.author", b"bob")
    os.setxattr(bell, "user.qfs.tags", b"entanglement, demo")
    assert os.getxattr(bell, "user.qfs.author") == b"bob"
    assert json.loads((bell / "meta.json").read_text())["tags"] == ["entanglement", "demo"]
    assert set(os.listxattr(bell)) >= {"user.qfs.author", "user.qfs.tags", "user.qfs.created"}
    with pytest.raises(OSError) as caught:
        os.getxattr(bell, "user.qfs.description")
    assert caught.value.errno == errno.ENODATA
    with pytest.raises(OSError) as caught:
        os.setxattr(bell, "user.other", b"x")
    assert caught.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as caught:
        os.setxattr(bell, "user.qfs.parameters", b"[1]")
    assert caught.value.errno == errno.EINVAL
    os.removexattr(bell, "user.qfs.author")
    assert json.loads((bell / "meta.json").read_text())["author"] == ""


def test_attributes_keep_meta_json_within_what_can_be_written_back(qfs):
    """Extended attributes change meta.json only within the bounds a write of meta.json
    has (so a backup of it can always be written back), to Unicode text, and a file that
    holds none answers ENODATA to get and ENOTSUP to set."""
    bell = qfs.write_circuit("bell")

    def refused(name: str, value: bytes) -> int:
        with pytest.raises(OSError) as caught:
            os.setxattr(bell, name, value)
        return caught.value.errno

    big = json.dumps({"k": "b" * 40_000}).encode()
    os.setxattr(bell, "user.qfs.parameters", big)
    assert refused("user.qfs.description", b"d" * 40_000) == errno.EFBIG
    assert refused("user.qfs.parameters", b"[" * 500 + b"]" * 500) == errno.EINVAL
    assert refused("user.qfs.parameters", b"[" * 20_000 + b"]" * 20_000) == errno.EINVAL
    assert refused("user.qfs.parameters", b'{"a": "\\ud800"}') == errno.EINVAL
    document = (bell / "meta.json").read_bytes()
    assert json.loads(document)["parameters"] == json.loads(big)
    (bell / "meta.json").write_bytes(document)  # what it shows, written back
    for text in ('{"description": "\\udc00"}', '{"parameters": {"theta": NaN}}'):
        with pytest.raises(OSError) as caught:
            (bell / "meta.json").write_text(text)
        assert caught.value.errno == errno.EINVAL
    assert refused("user.qfs.parameters", b'{"theta": Infinity}') == errno.EINVAL
    assert json.loads((bell / "meta.json").read_bytes()) == json.loads(document)
    for name, call in (("get", lambda: os.getxattr(bell / "latest.qasm", "user.qfs.author")),
                       ("set", lambda: os.setxattr(bell / "v1.qasm", "user.qfs.author", b"x"))):
        with pytest.raises(OSError) as caught:
            call()
        assert caught.value.errno == (errno.ENODATA if name == "get" else errno.ENOTSUP)


def test_a_creation_time_before_the_year_1000_is_written_back_as_it_reads(qfs):
    (qfs.circuits / "old").mkdir()
    os.setxattr(qfs.circuits / "old", "user.qfs.created", b"0001-01-01T00:00:00Z")
    os.listdir(qfs.circuits / "old")  # the circuit is filled (see Filling)
    document = (qfs.circuits / "old" / "meta.json").read_bytes()
    assert json.loads(document)["created"] == "0001-01-01T00:00:00Z"
    assert os.getxattr(qfs.circuits / "old", "user.qfs.created") == b"0001-01-01T00:00:00Z"
    (qfs.circuits / "old" / "meta.json").write_bytes(document)


def test_ls_l_gets_no_attribute_outside_user_qfs_without_a_lookup(qfs):
    """ls -l asks for security.selinux and both POSIX ACLs: they are ENOTSUP wherever
    asked (so ls stops asking for the rest of the listing; after ENODATA it asked every
    entry), answered without resolving the entry: even on a directory removed while open
    (resolving it would be ENOENT)."""
    bell = qfs.write_circuit("bell")
    for name in ("ghz", "x1", "x2", "x3"):
        qfs.write_circuit(name, GHZ3)
    listing = subprocess.run(["ls", "-l", str(qfs.circuits)], capture_output=True, text=True,
                             check=True).stdout
    assert all(line.startswith("drwxr-xr-x ") for line in listing.splitlines()[1:])  # no "+"
    if shutil.which("strace"):  # what ls asked: the three names once, not for each entry
        trace = qfs.root.parent / "ls.trace"
        subprocess.run(["strace", "-f", "-e", "trace=getxattr,lgetxattr", "-o", str(trace),
                        "ls", "-l", str(qfs.circuits)], capture_output=True, check=True)
        assert len(re.findall(r"getxattr\(", trace.read_text())) <= 3
    asked = ("security.selinux", "system.posix_acl_access", "system.posix_acl_default")
    held = os.open(bell, os.O_RDONLY | os.O_DIRECTORY)
    try:
        subprocess.run(["rm", "-r", str(bell)], check=True)
        for path in (held, qfs.root / "states", qfs.qubits / "ctl"):
            for name in asked:
                with pytest.raises(OSError) as caught:
                    os.getxattr(path, name)
                assert caught.value.errno == errno.ENOTSUP, (path, name)
    finally:
        os.close(held)


def test_results_files(qfs, tmp_path):
    bell = qfs.write_circuit("bell")
    result = tmp_path / "run-1.json"
    result.write_text('{"counts": {"00": 510, "11": 514}}')
    os.system(f"cp {result} {bell}/results/")
    assert os.listdir(bell / "results") == ["run-1.json"]
    assert (bell / "results" / "run-1.json").read_text() == result.read_text()
    f = open(bell / "results" / "bad.json", "w")
    f.write("{nope")
    with pytest.raises(OSError) as caught:
        f.close()
    assert caught.value.errno == errno.EINVAL
    assert os.listdir(bell / "results") == ["run-1.json"]


def test_a_result_is_strict_json_and_any_histogram_is_drawn_in_seconds(qfs):
    """results/*.json is JSON as its other readers take it (no NaN, no Infinity; deep
    nesting EINVAL, never EIO); a histogram draws the 64 most frequent outcomes and the
    rest as one bar, so 20,000 outcomes take seconds; counts that are not counts: ENOENT."""
    bell = qfs.write_circuit("bell")
    results = bell / "results"
    for text in ('{"counts": {"00": NaN}}', '{"counts": {"00": Infinity}}',
                 "[" * 100_000 + "]" * 100_000):
        with pytest.raises(OSError) as caught:
            (results / "bad.json").write_text(text)
        assert caught.value.errno == errno.EINVAL, text[:30]
    many = {format(i, "015b"): 1 + i % 7 for i in range(20_000)}
    (results / "many.json").write_text(json.dumps({"counts": many}))
    started = time.monotonic()
    assert (results / "many.png").read_bytes().startswith(b"\x89PNG")
    assert time.monotonic() - started < 30
    (results / "words.json").write_text('{"counts": {"00": "x"}}')
    (results / "huge.json").write_text('{"counts": {"0": 99999999999999999999999999999}}')
    for run in ("words", "huge"):  # the huge one was EIO: no plot takes such an integer
        with pytest.raises(FileNotFoundError):
            (results / f"{run}.png").read_bytes()
    assert sorted(os.listdir(results)) == ["huge.json", "many.json", "many.png", "words.json"]


def test_rmdir_refuses_with_results(qfs):
    bell = qfs.write_circuit("bell")
    (bell / "results" / "r.json").write_text("{}")
    with pytest.raises(OSError) as caught:
        os.rmdir(bell)
    assert caught.value.errno == errno.ENOTEMPTY
    assert (bell / "v1.qasm").read_text() == BELL
    (bell / "results" / "r.json").unlink()
    os.rmdir(bell)
    assert not bell.exists()


def test_search_queries(qfs):
    bell = qfs.write_circuit("bell")
    qfs.write_circuit("ghz", GHZ3)
    qfs.write_circuit("bell_pair_two")
    (bell / "meta.json").write_text('{"author": "alice", "tags": ["entanglement"]}')
    search = qfs.root / "search"

    def hits(query):
        return sorted(os.listdir(search / query))

    assert hits("bell") == ["bell", "bell_pair_two"]
    assert hits("tag:entanglement author:alice") == ["bell"]
    assert hits("qubits:[3 TO 5]") == ["ghz"]
    assert hits("gate:cx qubits:2") == ["bell", "bell_pair_two"]
    assert hits("nothing_matches_this") == []
    link = search / "ghz" / "ghz"
    assert os.readlink(link) == "../../circuits/ghz"
    assert (link / "v1.qasm").read_text() == GHZ3
    with pytest.raises(OSError) as caught:
        os.listdir(search / "qubits:[2 TO")
    assert caught.value.errno == errno.EINVAL


def test_similar_ranks_by_structure(qfs):
    qfs.write_circuit("bell")
    qfs.write_circuit("bell_copy", BELL + "// same shape\n")
    qfs.write_circuit("ghz", GHZ3)
    only_x = ("OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[5];\n"
              "x q[0];\nx q[1];\nx q[2];\nx q[3];\n")
    qfs.write_circuit("only_x", only_x)
    similar = sorted(os.listdir(qfs.circuits / "bell" / "similar"))
    assert similar[0] == "01-bell_copy"
    assert similar[-1].endswith("-only_x") or "only_x" not in "".join(similar)
    target = qfs.circuits / "bell" / "similar" / "01-bell_copy"
    assert os.readlink(target) == "../../bell_copy/latest.qasm"
    assert target.read_text() == BELL + "// same shape\n"
    # Rankings are kept while nothing changes; each change shows in the next listing.
    lines = subprocess.run(["ls", "-l", str(qfs.circuits / "bell" / "similar")],
                           capture_output=True, text=True, check=True).stdout.splitlines()[1:]
    assert {line.split()[-3]: line.split()[-1] for line in lines} == {
        entry: f"../../{entry.split('-', 1)[1]}/latest.qasm" for entry in similar}
    (qfs.circuits / "bell_copy" / "latest.qasm").write_text(only_x + "// x\n")  # not a twin
    assert sorted(os.listdir(qfs.circuits / "bell" / "similar"))[0] == "01-ghz"
    os.rename(qfs.circuits / "ghz", qfs.circuits / "ghz_renamed")
    (qfs.circuits / "twin.qasm").write_text(BELL + "// the twin now\n")
    relisted = sorted(os.listdir(qfs.circuits / "bell" / "similar"))
    assert relisted[0] == "01-twin" and not any(e.endswith("-ghz") for e in relisted)
    assert any(e.endswith("-ghz_renamed") for e in relisted)


def test_pictures_of_circuits_and_results(qfs):
    bell = qfs.write_circuit("bell")
    assert "v1.png" not in os.listdir(bell)  # drawn on first open, then listed
    picture = (bell / "v1.png").read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.stat(bell / "v1.png").st_size == len(picture)
    assert "v1.png" in os.listdir(bell)
    (bell / "results" / "r1.json").write_text('{"counts": {"00": 510, "11": 514}}')
    histogram = (bell / "results" / "r1.png").read_bytes()
    assert histogram[:4] == b"\x89PNG" and os.stat(bell / "results" / "r1.png").st_size == len(
        histogram)
    assert sorted(os.listdir(bell / "results")) == ["r1.json", "r1.png"]
    wide = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[3];\n" + "h q[0];\n" * 500
    big = qfs.write_circuit("wide", wide)
    with pytest.raises(OSError) as caught:
        (big / "v1.png").read_bytes()
    assert caught.value.errno == errno.EFBIG
    assert "too large to draw" in (big / "errors").read_text()
    subprocess.run(["rm", "-r", str(bell)], check=True)
    assert not bell.exists()
