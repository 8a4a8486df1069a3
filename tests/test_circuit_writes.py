"""Writing circuits the way real tools write files, through the mount."""

import errno
import json
import os
import subprocess
import tempfile

import pytest

from tests.conftest import BELL, GHZ3

pytestmark = pytest.mark.fuse


def versions(circuit_dir):
    return sorted(int(n[1:-5]) for n in os.listdir(circuit_dir) if n.endswith(".qasm")
                  and n.startswith("v"))


def test_cp_into_circuits_creates_version_1(qfs, tmp_path):
    source = tmp_path / "bell.qasm"
    source.write_text(BELL)
    subprocess.run(["cp", str(source), str(qfs.circuits)], check=True)
    bell = qfs.circuits / "bell"
    assert bell.is_dir()
    assert (bell / "v1.qasm").read_text() == BELL
    assert (bell / "latest.qasm").read_text() == BELL
    assert os.listdir(qfs.circuits) == ["bell"]  # it became the circuit directory
    assert (qfs.circuits / "bell.qasm").read_text() == BELL  # an unlisted alias of latest
    assert versions(bell) == [1]


def test_second_cp_of_same_name_adds_a_version(qfs):
    qfs.write_circuit("bell")
    qfs.write_circuit("bell", GHZ3)
    assert versions(qfs.circuits / "bell") == [1, 2]
    assert (qfs.circuits / "bell" / "v2.qasm").read_text() == GHZ3


def test_each_write_of_new_content_is_a_version(qfs):
    bell = qfs.write_circuit("bell")
    latest = bell / "latest.qasm"
    latest.write_text(GHZ3)  # Python: open(O_TRUNC), write, close
    latest.write_text(GHZ3)  # same content again: not a new version
    assert versions(bell) == [1, 2]
    subprocess.run(f"echo '// appended' >> {latest}", shell=True, check=True)
    assert versions(bell) == [1, 2, 3]
    assert (bell / "v3.qasm").read_text() == GHZ3 + "// appended\n"
    assert (bell / "v1.qasm").read_text() == BELL


def test_shell_redirect_truncates(qfs):
    bell = qfs.write_circuit("bell")
    subprocess.run(f"cat {bell}/v1.qasm | sed 's/h q/x q/' > {bell}/latest.qasm", shell=True,
                   check=True)
    assert (bell / "latest.qasm").read_text() == BELL.replace("h q", "x q")


def test_sed_in_place(qfs):
    bell = qfs.write_circuit("bell")
    done = subprocess.run(["sed", "-i", "s/h q\\[0\\]/x q[0]/", str(bell / "latest.qasm")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
    assert (bell / "latest.qasm").read_text() == BELL.replace("h q[0]", "x q[0]")
    assert versions(bell) == [1, 2]
    assert [n for n in os.listdir(bell) if n.startswith("sed")] == []


@pytest.mark.parametrize("backupcopy", ["yes", "no", "auto"])
def test_vim_saves(qfs, backupcopy):
    bell = qfs.write_circuit("bell")
    done = subprocess.run(
        ["vim", "-u", "NONE", "-N", "-n", "-es", "-c", f"set backupcopy={backupcopy} writebackup",
         "-c", "%s/h q\\[0\\]/x q[0]/", "-c", "wq", str(bell / "latest.qasm")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (bell / "latest.qasm").read_text() == BELL.replace("h q[0]", "x q[0]")
    assert versions(bell) == [1, 2]
    leftovers = [n for n in os.listdir(bell) if n.endswith("~") or n == "4913"]
    assert leftovers == []


def test_vim_swap_file_is_scratch_not_a_version(qfs):
    bell = qfs.write_circuit("bell")
    swap = bell / ".latest.qasm.swp"
    swap.write_bytes(b"b0VIM swap" * 100)
    assert swap.read_bytes() == b"b0VIM swap" * 100
    assert ".latest.qasm.swp" in os.listdir(bell)
    assert versions(bell) == [1]
    swap.unlink()
    assert ".latest.qasm.swp" not in os.listdir(bell)


def test_python_atomic_write(qfs):
    bell = qfs.write_circuit("bell")
    fd, temp = tempfile.mkstemp(dir=bell, prefix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(GHZ3)
    os.replace(temp, bell / "latest.qasm")
    assert (bell / "latest.qasm").read_text() == GHZ3
    assert versions(bell) == [1, 2]
    assert not os.path.exists(temp)


def test_bad_qasm_fails_close_with_einval_and_loses_nothing(qfs):
    bell = qfs.write_circuit("bell")
    f = open(bell / "latest.qasm", "w")
    f.write("OPENQASM 2.0;\nqreg q[1];\nbogus q[0];\n")
    with pytest.raises(OSError) as caught:
        f.close()
    assert caught.value.errno == errno.EINVAL
    assert (bell / "latest.qasm").read_text() == BELL
    assert versions(bell) == [1]
    assert "bogus" in (bell / "errors").read_text()
    assert "bogus" in (qfs.root / ".qfs" / "log").read_text()
    (bell / "latest.qasm").write_text(GHZ3)  # the daemon keeps serving
    assert versions(bell) == [1, 2]


def test_bad_qasm_fails_fsync(qfs):
    bell = qfs.write_circuit("bell")
    fd = os.open(bell / "latest.qasm", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"OPENQASM 3.0;\nqubit[2] q;\nfrobnicate q;\n")
    for call in (os.fsync, os.close):  # the close says it again: nothing was kept
        with pytest.raises(OSError) as caught:
            call(fd)
        assert caught.value.errno == errno.EINVAL
    assert versions(bell) == [1]


def test_bad_import_creates_nothing(qfs):
    with pytest.raises(OSError) as caught:
        qfs.write_circuit("broken", "OPENQASM 2.0;\nqreg q[1];\nnope q[0];\n")
    assert caught.value.errno == errno.EINVAL
    assert not (qfs.circuits / "broken").exists()
    assert "broken.qasm" not in os.listdir(qfs.circuits)


def test_rename_of_bad_content_keeps_both_sides(qfs):
    bell = qfs.write_circuit("bell")
    temp = bell / ".draft"
    temp.write_text("not qasm at all {")
    with pytest.raises(OSError) as caught:
        os.rename(temp, bell / "latest.qasm")
    assert caught.value.errno == errno.EINVAL
    assert temp.read_text() == "not qasm at all {"
    assert (bell / "latest.qasm").read_text() == BELL


def test_versions_are_immutable(qfs):
    bell = qfs.write_circuit("bell")
    for name in ("v1.qasm", "v1.qpy", "stats.json"):
        before = (bell / name).read_bytes()
        (bell / name).write_bytes(before)  # the same bytes written back: accepted
        with pytest.raises(PermissionError):
            (bell / name).write_bytes(before + b"\n")
        assert (bell / name).read_bytes() == before
    with pytest.raises(PermissionError):
        os.truncate(bell / "v1.qasm", 0)
    assert (bell / "v1.qasm").read_text() == BELL
    assert versions(bell) == [1]


def test_a_refused_rename_commits_nothing(qfs):
    """A rename whose source cannot stop being (a version, latest.qasm, a workflow
    definition) is EACCES before its bytes are committed under the new name."""
    bell = qfs.write_circuit("bell")
    (bell / "latest.qasm").write_text(GHZ3)
    for src, dst in ((bell / "v1.qasm", bell / "latest.qasm"),
                     (bell / "latest.qasm", bell / "v7.qasm"),
                     (bell / "v1.qasm", qfs.circuits / "copy.qasm")):
        with pytest.raises(PermissionError):
            os.rename(src, dst)
    assert versions(bell) == [1, 2]
    assert (bell / "latest.qasm").read_text() == GHZ3
    assert sorted(os.listdir(qfs.circuits)) == ["bell"]
    workflows = qfs.root / "workflows"
    (workflows / "w1.yaml").write_text("stages:\n  - circuit: bell\n")
    with pytest.raises(PermissionError):
        os.rename(workflows / "w1.yaml", workflows / "w2.yaml")
    assert sorted(os.listdir(workflows)) == ["w1", "w1.yaml"]


def test_truncate_hears_at_close_whether_its_change_was_kept(qfs):
    """ftruncate() is content, as a write is: `truncate -s` gets the refusal from close(),
    and one past the file's bound (EFBIG) leaves nothing to commit."""
    bell = qfs.write_circuit("bell")
    for size, target, code in ((0, "latest.qasm", errno.EINVAL), (10, "v1.qasm", errno.EACCES)):
        done = subprocess.run(["truncate", "-s", str(size), bell / target],
                              capture_output=True, text=True)
        assert done.returncode != 0 and os.strerror(code) in done.stderr, done.stderr
    fd = os.open(bell / "latest.qasm", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, GHZ3.encode())
        with pytest.raises(OSError) as too_big:
            os.ftruncate(fd, 1 << 30)
        assert too_big.value.errno == errno.EFBIG
    finally:
        with pytest.raises(OSError) as at_close:
            os.close(fd)
    assert at_close.value.errno == errno.EFBIG
    assert versions(bell) == [1]
    assert (bell / "latest.qasm").read_text() == BELL


def test_a_version_written_back_leaves_room_for_the_versions_after_it(qfs):
    """vN.qasm is written back for N up to 10^9 (EINVAL at create past it), so every
    later version still has a name the tree parses, and the circuit stays listable."""
    circuit = qfs.circuits / "big"
    circuit.mkdir()
    with pytest.raises(OSError) as caught:
        (circuit / "v9999999999.qasm").write_text(BELL)
    assert caught.value.errno == errno.EINVAL
    (circuit / "v1000000000.qasm").write_text(BELL)
    (circuit / "latest.qasm").write_text(GHZ3)
    assert versions(circuit) == [1000000000, 1000000001]
    assert (circuit / "v1000000001.qasm").read_text() == GHZ3


def test_retention_keeps_max_versions(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_versions_per_artifact: 3\n")
    qfs = mount_factory(extra=["--config", str(config)])
    bell = qfs.write_circuit("bell")
    for i in range(2, 6):
        (bell / "latest.qasm").write_text(BELL + f"// edit {i}\n")
    assert versions(bell) == [3, 4, 5]
    stats = json.loads((bell / "stats.json").read_text())
    assert [v["version"] for v in stats["versions"]] == [3, 4, 5]


def test_mkdir_then_write_latest(qfs):
    (qfs.circuits / "fresh").mkdir()
    assert versions(qfs.circuits / "fresh") == []
    assert (qfs.circuits / "fresh" / "latest.qasm").read_text() == ""
    (qfs.circuits / "fresh" / "latest.qasm").write_text(GHZ3)
    assert versions(qfs.circuits / "fresh") == [1]


def test_mv_renames_a_circuit(qfs):
    qfs.write_circuit("old")
    os.rename(qfs.circuits / "old", qfs.circuits / "new")
    assert (qfs.circuits / "new" / "v1.qasm").read_text() == BELL
    assert not (qfs.circuits / "old").exists()
    assert os.listdir(qfs.root / "search" / "new") == ["new"]
    assert os.listdir(qfs.root / "search" / "name:old") == []


def test_descriptors_open_in_a_circuit_follow_its_rename(qfs):
    """A writer of latest.qasm or meta.json open across `mv` commits to the circuit under
    its new name (it once failed ENOENT, or went to a new circuit of the old name), and a
    directory descriptor listed after the move names the files by the new path."""
    qfs.write_circuit("wa")
    latest = os.open(qfs.circuits / "wa" / "latest.qasm", os.O_WRONLY | os.O_TRUNC)
    meta = os.open(qfs.circuits / "wa" / "meta.json", os.O_WRONLY | os.O_TRUNC)
    listing = os.open(qfs.circuits / "wa", os.O_RDONLY | os.O_DIRECTORY)
    os.write(latest, GHZ3.encode())
    os.write(meta, b'{"description": "moved"}')
    os.rename(qfs.circuits / "wa", qfs.circuits / "wb")
    (qfs.circuits / "wa").mkdir()  # a new circuit of the old name takes none of it
    os.close(latest)
    os.close(meta)
    assert "v1.qasm" in os.listdir(listing)
    os.close(listing)
    assert (qfs.circuits / "wb" / "v1.qasm").read_text() == BELL  # at once, by the new path
    assert (qfs.circuits / "wb" / "v2.qasm").read_text() == GHZ3
    assert json.loads((qfs.circuits / "wb" / "meta.json").read_text())["description"] == "moved"
    assert versions(qfs.circuits / "wa") == []
    assert json.loads((qfs.circuits / "wa" / "meta.json").read_text()).get("description") != \
        "moved"


def test_rm_r_deletes_and_name_can_be_reused(qfs):
    qfs.write_circuit("neighbour")  # so that gone/similar/ holds a link rm must pass
    qfs.write_circuit("gone")
    assert os.listdir(qfs.circuits / "gone" / "similar") == ["01-neighbour"]
    (qfs.circuits / "gone" / "results" / "r.json").write_text("{}")
    subprocess.run(["rm", "-r", str(qfs.circuits / "gone")], check=True)
    assert not (qfs.circuits / "gone").exists()
    qfs.write_circuit("gone", GHZ3)
    assert (qfs.circuits / "gone" / "v1.qasm").read_text() == GHZ3


def test_open_reader_survives_delete(qfs):
    qfs.write_circuit("held")
    with open(qfs.circuits / "held" / "v1.qasm") as reader:
        subprocess.run(["rm", "-r", str(qfs.circuits / "held")], check=True)
        assert reader.read() == BELL
