"""Search through the mount: phrases, names as people type them, malformed queries, an index
writer that recovers from a full disk, and log lines no path can forge."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from whoosh import fields, index

from levels.oplog import EscapingFormatter
from tests.conftest import BELL, GHZ3

pytestmark = pytest.mark.fuse


def hits(qfs, query: str) -> list[str]:
    return sorted(os.listdir(qfs.root / "search" / query))


def refusal(qfs, query: str) -> int:
    with pytest.raises(OSError) as caught:
        os.listdir(qfs.root / "search" / query)
    return caught.value.errno


def test_quoted_phrases_search_descriptions_and_exact_tags(qfs):
    ghz = qfs.write_circuit("ghz", GHZ3)
    (ghz / "meta.json").write_text(json.dumps(
        {"description": "Prepares a GHZ state on three qubits", "tags": ["error correction"]}))
    other = qfs.write_circuit("other")
    (other / "meta.json").write_text(json.dumps(
        {"description": "an entangled state, unlike GHZ", "tags": ["error", "correction"]}))
    assert hits(qfs, '"GHZ state"') == ["ghz"]
    assert hits(qfs, 'description:"ghz state"') == ["ghz"]
    assert hits(qfs, '"state GHZ"') == []
    assert hits(qfs, "state GHZ") == ["ghz", "other"]
    assert hits(qfs, 'tag:"error correction"') == ["ghz"]
    assert hits(qfs, 'gate:"h cx"') == ["ghz", "other"]
    assert refusal(qfs, 'qubits:"3"') == errno.EINVAL
    assert "qubits: takes a number or a range" in (qfs.root / ".qfs" / "log").read_text()


def test_an_index_of_the_previous_schema_is_rebuilt(mount_factory, tmp_path):
    data = tmp_path / "data"
    first = mount_factory(data=data)
    first.write_circuit("ghz2", GHZ3)
    first.stop()
    # The schema before name words were matched by prefix: one circuit, as LMDB holds.
    previous = fields.Schema(
        name=fields.ID(stored=True, unique=True, sortable=True), title=fields.TEXT,
        description=fields.TEXT, author=fields.KEYWORD(lowercase=True),
        tags=fields.KEYWORD(lowercase=True, commas=True, scorable=True),
        gates=fields.KEYWORD(lowercase=True), qubits=fields.NUMERIC(int),
        depth=fields.NUMERIC(int))
    shutil.rmtree(data / "index")
    (data / "index").mkdir()
    writer = index.create_in(str(data / "index"), previous).writer()
    writer.add_document(name="ghz2", title="ghz2 ghz2", description="", author="", tags="",
                        gates="h cx measure", qubits=3, depth=4)
    writer.commit()
    second = mount_factory(data=data)
    assert hits(second, "ghz") == ["ghz2"]
    assert "older schema: rebuilding" in second.daemon_log()


def test_bare_words_find_names_by_prefix_of_their_parts(qfs):
    for name in ("ghz2", "ghz_5", "GHZState", "my-bell-pair", "bell", "zghz"):
        qfs.write_circuit(name)
    assert hits(qfs, "ghz") == ["GHZState", "ghz2", "ghz_5"]
    assert hits(qfs, "GHZ") == ["GHZState", "ghz2", "ghz_5"]
    assert hits(qfs, "bell") == ["bell", "my-bell-pair"]
    assert hits(qfs, "pair") == ["my-bell-pair"]
    assert hits(qfs, "my-bell") == ["my-bell-pair"]
    assert hits(qfs, "state") == ["GHZState"]
    assert hits(qfs, "bell AND NOT pair") == ["bell"]
    assert hits(qfs, "name:ghz") == []  # name: is the exact name
    assert hits(qfs, "name:ghz2") == ["ghz2"]
    # NOT matches documents Whoosh keeps deleted: a removed circuit, a new version's
    # predecessor; neither is found.
    (qfs.circuits / "bell" / "latest.qasm").write_text(BELL + "// two\n")
    subprocess.run(["rm", "-r", str(qfs.circuits / "zghz")], check=True)
    assert hits(qfs, "NOT pair") == ["GHZState", "bell", "ghz2", "ghz_5"]


MALFORMED = ["qubits:[a TO b]", "AND", "NOT", "a AND", "name:", "qubits:<=", "qubits:1e9",
             "OR bell", "bell NOT", "bell AND ()", "(bell AND) ghz", "name: bell",
             "depth:[1 TO 99999999999]", "   "]


def test_malformed_queries_are_einval_with_the_reason(qfs):
    qfs.write_circuit("bell")
    for query in MALFORMED:
        assert refusal(qfs, query) == errno.EINVAL, query
    log = (qfs.root / ".qfs" / "log").read_text()
    for query in MALFORMED:
        assert f"bad search query {query!r}: " in log, query


PIECES = ["ghz", "GHZ", "bell", "state", "AND", "OR", "NOT", "ANDNOT", "(", ")", '"', "[",
          "]", "{", "}", "TO", "qubits:", "name:", "tag:", "gate:", "depth:", "description:",
          ">", "<", ">=", "<=", "*", "?", "~", "^", "2", "-1", "1e9", "a", " ", "the",
          '"GHZ state"', "qubits:[2 TO 5]"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=8),
       spaced=st.booleans())
def test_every_query_gets_results_or_einval(qfs, pieces, spaced):
    """Never EIO (conftest also fails the test on a traceback in the daemon's log)."""
    if not (qfs.circuits / "bell").exists():
        qfs.write_circuit("bell")
    query = (" " if spaced else "").join(pieces)
    if query in (".", ".."):
        return
    try:
        os.listdir(qfs.root / "search" / query)
    except OSError as exc:
        assert exc.errno == errno.EINVAL, (query, exc)


def test_the_indexer_recovers_by_itself_after_a_full_disk(mount_factory, tmp_path):
    data = tmp_path / "data"
    index_dir = data / "index"
    index_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(index_dir)],
                   check=True)
    try:
        qfs = mount_factory(data=data)
        qfs.write_circuit("before")
        assert hits(qfs, "before") == ["before"]
        filler = index_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * 65536)
        os.close(fd)
        assert full.value.errno == errno.ENOSPC
        qfs.write_circuit("during")  # LMDB is on another disk: stored
        for _ in range(3):
            assert refusal(qfs, "during") == errno.EBUSY
        assert "No space left on device" in (qfs.root / ".qfs" / "log").read_text()
        filler.unlink()
        deadline = time.monotonic() + 20
        while "writing succeeds again" not in qfs.daemon_log():  # no search needed
            assert time.monotonic() < deadline, qfs.daemon_log()
            time.sleep(0.1)
        assert hits(qfs, "during") == ["during"]
        assert hits(qfs, "before") == ["before"]
        assert qfs.daemon_log().count("retrying until it succeeds") == 1
        health = json.loads((qfs.root / ".qfs" / "health").read_text())
        assert health["components"]["search_index"]["status"] == "healthy"
        qfs.stop()
    finally:
        subprocess.run(["umount", "-l", str(index_dir)], check=False)


def test_control_characters_in_paths_cannot_forge_log_lines(qfs):
    forged = "x[\n<fake line>\r\x1b[2K\u2028<fake line>"
    with pytest.raises(OSError) as caught:
        os.stat(qfs.root / "search" / forged)
    assert caught.value.errno == errno.EINVAL
    oplog = (qfs.root / ".qfs" / "log").read_text()
    assert "x[\\n<fake line>\\r\\x1b[2K\\u2028<fake line>" in oplog
    for text in (oplog, (qfs.data / "qfs.log").read_text(), qfs.daemon_log()):
        assert "<fake line>" in text
        assert not any(line.startswith("<fake line>") for line in text.split("\n"))
        assert "\r" not in text and "\x1b" not in text and "\u2028" not in text


def test_the_log_formatter_keeps_each_record_on_its_own_lines():
    """The formatter qfsmount installs on qfs.log: a record's message is one line, and a
    traceback is indented under it."""
    formatter = EscapingFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad\n<fake line>")
    except ValueError:
        record = logging.LogRecord("qfs", logging.WARNING, __file__, 1, "refused %s",
                                   ("x\n<fake line>\x1b[2K",), sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert lines[0] == "WARNING qfs: refused x\\n<fake line>\\x1b[2K"
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[1:])


def test_long_listings_show_each_entry_once_with_its_own_attributes(qfs, tmp_path):
    """/circuits and /search/<query> list many entries over several readdir replies, all
    alike but for name, mtime and (links) size: each entry once, each circuit's mtime that
    of its latest version, each link's size the length of its target, and /circuits'
    scratch files after the circuits with their own attributes."""
    sources = tmp_path / "src"
    sources.mkdir()
    names = [f"c{i}" for i in range(1, 700, 2)]  # names of 2 to 4 characters
    for name in names:
        (sources / f"{name}.qasm").write_text(GHZ3 + f"// {name}\n")
    subprocess.run(["cp", "-t", str(qfs.circuits), *sorted(os.listdir(sources))],
                   cwd=sources, check=True)
    scratch = qfs.circuits / ".notes.txt~"
    scratch.write_bytes(b"x" * 123)

    listed = os.listdir(qfs.circuits)
    assert sorted(listed) == sorted([*names, scratch.name])
    with os.scandir(qfs.circuits) as entries:  # the attributes readdir gave, as ls -l sees
        shown = {entry.name: entry.stat(follow_symlinks=False) for entry in entries}
    assert shown[scratch.name].st_size == 123
    for name in names:
        latest = os.stat(qfs.circuits / name / "latest.qasm")
        assert shown[name].st_mtime_ns == latest.st_mtime_ns, name
        assert shown[name].st_size == 0 and shown[name].st_ino != shown[scratch.name].st_ino
    assert len({shown[name].st_mtime_ns for name in names}) > 1

    query = qfs.root / "search" / "qubits:3"
    assert sorted(os.listdir(query)) == sorted(names)
    with os.scandir(query) as entries:
        links = {entry.name: entry.stat(follow_symlinks=False) for entry in entries}
    for name, attrs in links.items():
        target = os.readlink(query / name)
        assert target == f"../../circuits/{name}"
        assert attrs.st_size == len(target.encode()), name
        assert (query / name / "latest.qasm").read_text().endswith(f"// {name}\n")
    # ls -l: every hit a link to its circuit, with the size of its target
    lines = subprocess.run(["ls", "-l", str(query)], capture_output=True, text=True,
                           check=True).stdout.splitlines()[1:]
    shown_links = {line.split()[-3]: (line[0], int(line.split()[4]), line.split()[-1])
                   for line in lines}
    assert shown_links == {name: ("l", len(f"../../circuits/{name}"), f"../../circuits/{name}")
                           for name in names}
    # A hit that stops matching is gone from the next listing at once.
    subprocess.run(["rm", "-r", str(qfs.circuits / names[0])], check=True)
    (qfs.circuits / names[1] / "latest.qasm").write_text(BELL)  # 2 qubits now
    assert sorted(os.listdir(query)) == sorted(names[2:])
