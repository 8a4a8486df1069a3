"""The tree's semantics in process, without a mount: levels/vfs resolves each path of the
README's tree to one entry kind, and the kinds keep the rules the mount tests prove through
FUSE (commit on rename, rm of a view hides it, derived files accept only their bytes, the
errno classes of refusals). Fast: no daemon, no kernel."""

import pathlib
import re
import stat

import pytest
import trio

from levels import vfs
from levels.config import load_config
from levels.errors import Exists, Invalid, NoAttribute, NotEmpty, NotFound, ReadOnly, TooBig
from levels.fabric import Fabric
from levels.qasm import VIEW_FORMATS
from levels.vfs import circuits as c
from levels.vfs import qubits as q
from levels.vfs import states as s
from levels.vfs import tree as t
from levels.vfs import workflows as w
from levels.vfs.entry import Attrs, Live, Scratch, Symlink, Uniform
from tests.conftest import BELL, GHZ3

UID = 1000


@pytest.fixture
def fabric(tmp_path):
    f = Fabric(tmp_path / "data", load_config(environ={}))
    yield f
    f.close()


def run(fn, *args):
    return trio.run(fn, *args)


async def at(fabric, text: str) -> vfs.Entry:
    return await vfs.resolve(fabric, tuple(p for p in text.split("/") if p))


async def write(fabric, text: str, data: bytes) -> None:
    """What create() then close() do: the parent makes the entry, the entry commits."""
    path = tuple(p for p in text.split("/") if p)
    parent = await vfs.directory_at(fabric, path[:-1])
    entry = await parent.create(path[-1], 0o644, UID, UID)
    if entry.scratch is not None:
        entry.scratch.data.extend(data)
    if entry.commits:
        await entry.commit(data, UID)
    if entry.scratch is not None and entry.commits:  # an import's scratch goes at release
        fabric.scratch.remove(path[:-1], path[-1])


def test_each_path_of_the_readme_tree_is_one_kind(fabric):
    async def main():
        await write(fabric, "/circuits/bell.qasm", BELL.encode())
        await (await at(fabric, "/states")).mkdir("psi", UID)
        kinds = {
            "/": t.RootDir, "/circuits": c.CircuitsDir, "/circuits/bell": c.CircuitDir,
            "/circuits/bell/latest.qasm": c.LatestQasm, "/circuits/bell/v1.qasm": c.VersionSource,
            "/circuits/bell/meta.json": c.MetaJson, "/circuits/bell/stats.json": c.Derived,
            "/circuits/bell/errors": c.ErrorsFile, "/circuits/bell/results": c.ResultsDir,
            "/circuits/bell/similar": c.SimilarDir, "/circuits/bell/compiled": c.CompiledDir,
            "/circuits/bell.qasm": c.LatestQasm, "/search": t.SearchDir,
            "/search/qubits:2": t.QueryDir, "/.qfs": t.OpsDir, "/.qfs/log": Live,
            "/qubits": q.QubitsDir, "/qubits/ctl": q.DeviceCtl, "/qubits/q0": q.QubitDir,
            "/qubits/q0/ctl": q.QubitCtl, "/qubits/tasks": q.TasksDir, "/states": s.StatesDir,
            "/states/psi": s.PendingDir, "/workflows": w.WorkflowsDir,
        }
        for fmt in VIEW_FORMATS:  # views follow the levels' format table
            kinds[f"/circuits/bell/v1.{fmt}"] = c.Derived
        for path, kind in kinds.items():
            assert type(await at(fabric, path)) is kind, path
        for missing in ("/nope", "/circuits/bell/v9.qasm", "/circuits/bell/latest.qasm/x",
                        "/qubits/q100000", "/states/psi/statevector.npy", "/circuits/bell/x"):
            with pytest.raises(NotFound):
                await at(fabric, missing)

    run(main)


def test_versions_and_views_are_immutable_and_latest_commits(fabric):
    async def main():
        await (await at(fabric, "/circuits")).mkdir("g", UID)
        with pytest.raises(NotFound):  # being filled: it shows what was written into it
            await at(fabric, "/circuits/g/latest.qasm")
        (await vfs.directory_at(fabric, ("circuits", "g"))).listed()  # until first listed
        latest = await at(fabric, "/circuits/g/latest.qasm")
        await latest.commit(BELL.encode(), UID)
        await latest.commit(GHZ3.encode(), UID)
        v1 = await at(fabric, "/circuits/g/v1.qasm")
        assert await v1.read_all() == BELL.encode()
        assert v1.attrs.immutable and (await at(fabric, "/circuits/g/v1.qpy")).attrs.immutable
        assert not latest.attrs.immutable
        with pytest.raises(ReadOnly):  # a version holds other bytes
            await v1.commit(GHZ3.encode(), UID)
        await v1.commit(BELL.encode(), UID)  # its own bytes: accepted, nothing changes
        with pytest.raises(Invalid):
            await latest.commit(b"OPENQASM 2.0;\nqreg q[1];\nfoo q[0];\n", UID)
        names = [n for n, _ in await (await at(fabric, "/circuits/g")).list()]
        assert {"v1.qasm", "v2.qasm", "v2.diff", *(f"v2.{f}" for f in VIEW_FORMATS)} <= set(names)
        assert fabric.circuits.get("g").latest.n == 2

    run(main)


def test_derived_files_take_only_the_bytes_they_hold(fabric):
    async def main():
        await write(fabric, "/circuits/bell.qasm", BELL.encode())
        view = await at(fabric, "/circuits/bell/v1.qasm3")
        await view.commit(await view.read_all(), UID)
        with pytest.raises(ReadOnly):
            await view.commit(b"other", UID)
        meta = await at(fabric, "/circuits/bell/meta.json")
        with pytest.raises(Invalid):
            await meta.commit(b"not json", UID)

    run(main)


def test_an_editor_save_by_rename_commits_and_rm_hides_a_facet(fabric):
    async def main():
        await write(fabric, "/circuits/bell.qasm", BELL.encode())
        circuit = await vfs.directory_at(fabric, ("circuits", "bell"))
        tmp = await circuit.create(".latest.qasm.swp", 0o600, UID, UID)
        assert isinstance(tmp, Scratch)
        tmp.scratch.data.extend(GHZ3.encode())
        await vfs.rename(fabric, ("circuits", "bell", ".latest.qasm.swp"),
                         ("circuits", "bell", "latest.qasm"), UID)
        assert fabric.circuits.get("bell").latest.n == 2
        assert fabric.scratch.find(("circuits", "bell"), ".latest.qasm.swp") is None
        # latest.qasm moved aside (vim's backup) leaves a scratch copy, the version stays
        await vfs.rename(fabric, ("circuits", "bell", "latest.qasm"),
                         ("circuits", "bell", "latest.qasm~"), UID)
        assert fabric.scratch.find(("circuits", "bell"), "latest.qasm~").data == GHZ3.encode()
        with pytest.raises(Invalid):  # a file the fabric would not keep
            await circuit.create("notes.txt", 0o644, UID, UID)
        with pytest.raises(ReadOnly):
            await vfs.rename(fabric, ("circuits", "bell", "latest.qasm~"),
                             ("circuits", "bell", "v1.qpy"), UID)
        await circuit.unlink("v1.qpy")  # a facet: hidden, nothing deleted
        with pytest.raises(NotFound):
            await at(fabric, "/circuits/bell/v1.qpy")
        assert fabric.circuits.get("bell").latest.n == 2

    run(main)


def test_results_rmdir_and_circuit_directories(fabric):
    async def main():
        await write(fabric, "/circuits/bell.qasm", BELL.encode())
        circuits = await vfs.directory_at(fabric, ("circuits",))
        with pytest.raises(Exists):
            await circuits.mkdir("bell", UID)
        circuit = await vfs.directory_at(fabric, ("circuits", "bell"))
        await write(fabric, "/circuits/bell/results/r1.json", b'{"counts": {"00": 3}}')
        with pytest.raises(NotEmpty):
            await circuit.rmdir("results")
        await (await vfs.directory_at(fabric, ("circuits", "bell", "results"))).unlink("r1.json")
        await circuit.rmdir("results")  # virtual: a no-op once empty
        await circuit.rmdir("similar")
        with pytest.raises(Invalid):  # a circuit moves only within /circuits
            await vfs.rename(fabric, ("circuits", "bell"), ("states", "bell"), UID)
        await vfs.rename(fabric, ("circuits", "bell"), ("circuits", "pair"), UID)
        await circuits.rmdir("pair")
        assert fabric.circuits.mtime("pair") is None

    run(main)


def test_xattrs_are_meta_fields_and_pins(fabric):
    async def main():
        await write(fabric, "/circuits/bell.qasm", BELL.encode())
        circuit = await at(fabric, "/circuits/bell")
        await circuit.setxattr("user.qfs.tags", b"a, b")
        assert await circuit.getxattr("user.qfs.tags") == b"a,b"
        assert "user.qfs.tags" in circuit.listxattr()
        with pytest.raises(NoAttribute):
            await circuit.getxattr("user.qfs.author")
        v1 = await at(fabric, "/circuits/bell/v1.qasm")
        await v1.setxattr(c.PINNED, b"1")
        assert v1.listxattr() == [c.PINNED]
        await v1.removexattr(c.PINNED)
        with pytest.raises(NoAttribute):
            await v1.getxattr(c.PINNED)

    run(main)


def test_states_workflows_and_control_files(fabric):
    async def main():
        states = await vfs.directory_at(fabric, ("states",))
        await states.mkdir("psi", UID)
        with pytest.raises(ReadOnly):
            await states.create("x.npy", 0o644, UID, UID)
        pending = await vfs.directory_at(fabric, ("states", "psi"))
        with pytest.raises(Invalid):
            await pending.create("psi.npy", 0o644, UID, UID)
        upload = await pending.create("statevector.npy", 0o644, UID, UID)
        with pytest.raises(Invalid):  # the header is judged at the write() that brings it
            upload.screen(bytearray(b"not numpy at all"))
        with pytest.raises(Invalid):  # and close() repeats it
            await upload.commit(b"not numpy at all", UID)

        workflow = await (await vfs.directory_at(fabric, ("workflows",))).create(
            "w.yaml", 0o644, UID, UID)
        with pytest.raises(TooBig):
            workflow.screen(bytearray(1 << 20))

        ctl = await at(fabric, "/qubits/ctl")
        assert ctl.is_control and ctl.writable
        reply = await ctl.control("alloc 2 task=t1", UID)
        assert reply.startswith("allocated t1:")
        assert isinstance(await at(fabric, "/qubits/tasks/t1/ctl"), q.TaskCtl)
        with pytest.raises(Invalid):
            await ctl.control("frobnicate", UID)

    run(main)


def test_search_links_into_circuits(fabric):
    async def main():
        await write(fabric, "/circuits/bell.qasm", BELL.encode())
        query = await vfs.directory_at(fabric, ("search", "bell"))
        shown = dict(await query.list())["bell"]  # a listing shows only the attributes
        link = await query.lookup("bell")
        assert isinstance(link, Symlink)
        assert link.link_target == "../../circuits/bell"
        assert isinstance(shown, Attrs)
        assert (shown.kind, shown.size) == (stat.S_IFLNK, len(link.link_target))

    run(main)


def test_a_listing_resumes_at_any_offset():
    """readdir resumes a listing at the offset of its last reply: every entry once, in
    order, from pairs in a list (placed at the offset at once) or in any other sequence,
    each with its own mtime (and size, where the listing gives sizes)."""
    extra = [("z1", Attrs(stat.S_IFDIR, 0o755, 0)), ("z2", Attrs(stat.S_IFDIR, 0o755, 0))]
    shape = Attrs(stat.S_IFLNK, 0o777, 0, size=1)
    for pairs in ([(f"k{k}", k) for k in range(7)], tuple((f"k{k}", k) for k in range(7))):
        for size_of in (None, len):
            listing = Uniform(pairs, shape, size_of, extra)
            whole = list(listing)
            assert [name for name, _ in whole] == [f"k{k}" for k in range(7)] + ["z1", "z2"]
            assert [(a.kind, a.mtime_ns, a.size) for _, a in whole[:7]] == [
                (stat.S_IFLNK, k, 1 if size_of is None else 2) for k in range(7)]
            for start in range(len(whole) + 1):
                assert list(vfs.listed_from(listing, start)) == whole[start:]
                stamped = [name for name, _ in listing.stamps_from(start)]
                assert stamped + [name for name, _ in listing.rest_from(start)] == \
                    [name for name, _ in whole[start:]]


def test_fsops_tests_no_path_shapes():
    """The FUSE adapter indexes no path: what a path is, levels/vfs says."""
    root = pathlib.Path(__file__).resolve().parent.parent / "fsops"
    for source in root.glob("*.py"):
        text = source.read_text()
        assert not re.search(r"path\[\d", text), source.name
        assert '"circuits"' not in text and '"results"' not in text, source.name
