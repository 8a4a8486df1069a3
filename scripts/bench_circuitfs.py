"""Benchmark CircuitFS against baselines measured in the same run; prints one JSON document.

Absolute times depend on the machine, so every qfs figure comes with a baseline taken
moments before or after on the same disk and CPUs, and the report gives medians and ratios:

  readdir_stat  `ls -l`-like walks of /circuits (N circuits) vs a minimal pyfuse3 passthrough
                (scripts/passthrough_fs.py) over a plain tree of the same shape, and vs that
                plain tree itself
  cp_import     one `cp` of N small .qasm files into an empty qfs vs into a plain directory,
                and how long after cp the last circuit is found by /search
  search        latency per query kind at N and at BIG circuits: through the mount, through
                qfs's SearchIndex in-process, and raw Whoosh on the same index
  lmdb_floor    synced LMDB puts (one transaction each) and gets: what no qfs write can beat
  tree_walk     `find`, `du -s`, `grep -R` and `tar` of /circuits at WALK circuits on a fresh
                mount: what a tree walker pays for the views each circuit directory lists
                and for the similar/ links grep -R follows; with --walk-baseline REV, that
                revision side by side, walks alternating, and FUSE requests per circuit

Run it from the repository root with the project's virtualenv, as root with /dev/fuse:

    .venv/bin/python scripts/bench_circuitfs.py [--circuits 10000] [--big 100000] [--quick]
                                                [--out FILE]

Progress goes to stderr, the JSON to stdout. Temporary trees live under /tmp and are removed
at the end; every mount is unmounted in a finally block. This is not a test (pytest must not
collect it): it takes minutes and measures rather than checks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import trio
from benchlib import (
    STARTED,
    Json,
    latency,
    mounted,
    percentile,
    qfs_command,
    ratio,
    say,
    timed,
    worktree,
)

REPO = Path(__file__).resolve().parent.parent
PASSTHROUGH = REPO / "scripts" / "passthrough_fs.py"
LOAD_CHUNK = 10_000  # circuits per commit_many transaction when bulk loading
TAG_EVERY = 100  # one circuit in TAG_EVERY gets tag "x": a selective `tag:x` query
QUBIT_VARIANTS = {2: (), 3: ("ccx",), 4: ("swap",), 5: ("t",)}  # qubits -> extra gates


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each part does; --quick shrinks it to a smoke check."""

    circuits: int
    big: int
    walk_reps: int = 7
    plain_cp_reps: int = 3
    search_reps: int = 50
    broad_reps: int = 20
    lmdb_puts: int = 2000
    lmdb_gets: int = 100_000
    similar_samples: int = 10
    walk_circuits: int = 2000


# -- circuits --------------------------------------------------------------------------------


def name_of(index: int) -> str:
    """Circuit names sort in index order, so the last one copied is the last one named."""
    return f"c{index:06d}"


def program(qubits: int, extra: tuple[str, ...] = (), angle: float = 0.1, tag: str = "") -> bytes:
    """An OpenQASM 2 circuit of a few dozen gates; `tag` and `angle` make each file distinct."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";']
    if tag:
        lines.append(f"// {tag}")
    lines += [f"qreg q[{qubits}];", f"creg c[{qubits}];"]
    for layer in range(4):
        lines += [f"h q[{i}];" for i in range(qubits)]
        lines += [f"cx q[{i}],q[{i + 1}];" for i in range(qubits - 1)]
        lines += [f"rz({angle * (layer + 1):.6f}) q[{i}];" for i in range(qubits)]
        for gate in extra:
            if gate == "ccx":
                lines.append("ccx q[0],q[1],q[2];")
            elif gate == "swap":
                lines.append("swap q[0],q[3];")
            else:
                lines.append(f"{gate} q[{layer % qubits}];")
    lines.append("measure q -> c;")
    return ("\n".join(lines) + "\n").encode()


def dynamic_program(qubits: int, extra: tuple[str, ...] = ()) -> bytes:
    """program's gates in OpenQASM 3 after a measurement and a branch on it, which OpenQASM
    2 cannot express: each version's .qasm2 view is refused, and the reason noted."""
    gates = program(qubits, extra).decode().splitlines()[4:-1]  # past the registers
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{qubits}] q;",
             f"bit[{qubits}] c;", "c[0] = measure q[0];", "if (c[0]) x q[1];", *gates,
             "c = measure q;"]
    return ("\n".join(lines) + "\n").encode()


def bulk_load(data: Path, count: int, dynamic: bool = False) -> Json:
    """Fill a data dir through the Python API (no FUSE): qubit counts 2-5 in turn, 1% tagged;
    with `dynamic`, each program in OpenQASM 3 with a branch on a measurement.

    The corpus is not uniform on purpose: `qubits:5` then matches a quarter, not everything.
    """
    from levels.config import load_config
    from levels.fabric import Fabric

    started = time.perf_counter()
    fabric = Fabric(data, load_config())
    try:
        write = dynamic_program if dynamic else program
        prepared = {q: trio.run(fabric.circuits.prepare_version, write(q, extra))
                    for q, extra in QUBIT_VARIANTS.items()}
        qubit_list = list(QUBIT_VARIANTS)
        for start in range(0, count, LOAD_CHUNK):
            indices = range(start, min(count, start + LOAD_CHUNK))
            for k, qubits in enumerate(qubit_list):
                names = [name_of(i) for i in indices if i % len(qubit_list) == k]
                if names:
                    fabric.circuits.commit_many(names, prepared[qubits])
        committed = time.perf_counter()
        for i in range(0, count, TAG_EVERY):
            fabric.circuits.update_meta(name_of(i), lambda meta: {**meta, "tags": ["x"]})
        tagged = time.perf_counter()
        deadline = time.monotonic() + 1800
        indexed = 0
        while time.monotonic() < deadline:
            # wait_committed returns quietly when its timeout passes: check the count too.
            fabric.search.wait_committed(timeout=600)
            indexed = fabric.search.doc_count()
            if indexed == count:
                break
            time.sleep(0.5)
        done = time.perf_counter()
    finally:
        fabric.close()
    if indexed != count:
        raise RuntimeError(f"search index holds {indexed} of {count} circuits after loading")
    return {
        "circuits": count,
        "lmdb_commit_s": round(committed - started, 3),
        "tag_updates": len(range(0, count, TAG_EVERY)),
        "tag_updates_s": round(tagged - committed, 3),
        "index_catch_up_s": round(done - tagged, 3),
        "total_s": round(done - started, 3),
    }


# -- mounts and logs -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (to tell CPU-bound from waiting)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_TRACING = Path("/sys/kernel/tracing")
_REQUEST_SENT = re.compile(r"fuse_request_send: connection (\d+) req \d+ opcode \d+ \(FUSE_(\w+)\)")


def fuse_requests(mountpoint: Path, action: Callable[[], object]) -> dict[str, int] | None:
    """How many FUSE requests of each kind `action` made the kernel send to the daemon of
    `mountpoint` (the fuse tracepoints: counts, unlike times, do not move with a noisy
    machine). None where tracefs cannot be written (not root, no tracefs)."""
    enable = _TRACING / "events" / "fuse" / "fuse_request_send" / "enable"
    if not os.access(enable, os.W_OK):
        return None
    connection = str(os.minor(os.stat(mountpoint).st_dev))
    (_TRACING / "buffer_size_kb").write_text("200000")
    (_TRACING / "trace").write_text("")
    was_on = (_TRACING / "tracing_on").read_text().strip()
    (_TRACING / "tracing_on").write_text("1")
    enable.write_text("1")
    try:
        action()
    finally:
        enable.write_text("0")
        (_TRACING / "tracing_on").write_text(was_on)
    counts: dict[str, int] = {}
    with open(_TRACING / "trace") as trace:
        for line in trace:
            sent = _REQUEST_SENT.search(line)
            if sent and sent.group(1) == connection:
                counts[sent.group(2)] = counts.get(sent.group(2), 0) + 1
    (_TRACING / "trace").write_text("")
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of a process, with its kernel name (tid -> name, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (task / "stat").read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def thread_cpu_delta(pid: int, before: dict[int, tuple[str, float]]) -> Json:
    """Where the daemon's CPU went since `before`: the trio thread, trio's workers, others.

    Python threads share one GIL, so when these add up to the wall time the daemon is
    CPU-bound whatever the number of cores. In qfs the busiest "other" thread is the search
    indexer (Python 3.11 does not name OS threads, so it shows as "python").
    """
    after = thread_cpu(pid)
    main = workers = 0.0
    others: list[float] = []
    for tid, (comm, cpu) in after.items():
        used = cpu - before.get(tid, (comm, 0.0))[1]
        if tid == pid:
            main += used
        elif comm.startswith("Trio thread"):
            workers += used
        else:
            others.append(used)
    return {"trio_loop_thread": round(main, 3), "trio_worker_threads": round(workers, 3),
            "other_threads": [round(x, 3) for x in sorted(others, reverse=True) if x > 0.005]}


def qfs_mount(data: Path, mountpoint: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """qfs on `mountpoint`, its output where log_findings looks for it."""
    log = data.parent / f"{data.name}-daemon.out"
    return mounted(qfs_command(mountpoint, data), mountpoint, log)


def log_findings(data: Path) -> Json:
    """Warnings, errors and tracebacks the qfs daemon logged for this data dir."""
    lines: list[str] = []
    for path in (data / "qfs.log", data.parent / f"{data.name}-daemon.out"):
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()
    bad = [line for line in lines
           if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback|Fatal Python", line)]
    unique = list(dict.fromkeys(bad))
    return {"warnings_or_errors": len(bad), "first": unique[:8]}


# -- (a) readdir + stat ----------------------------------------------------------------------


def ls_l(directory: Path) -> int:
    """What `ls -l` does per directory: read every entry, lstat each one."""
    count = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)
            count += 1
    return count


def make_plain_tree(root: Path, count: int) -> None:
    """Same shape as /circuits: one directory per circuit with a couple of small files."""
    root.mkdir()
    source = program(5)
    for i in range(count):
        d = root / name_of(i)
        d.mkdir()
        (d / "latest.qasm").write_bytes(source)
        (d / "meta.json").write_bytes(b'{"description": "", "tags": []}\n')


def bench_readdir_stat(work: Path, data: Path, sizes: Sizes) -> Json:
    count = sizes.circuits
    plain = work / "plain_tree"
    say(f"readdir_stat: plain tree of {count} directories")
    make_plain_tree(plain, count)
    mnt_qfs, mnt_pt = work / "mnt_walk_qfs", work / "mnt_walk_pt"
    with (
        qfs_mount(data, mnt_qfs) as qfs_proc,
        mounted([sys.executable, str(PASSTHROUGH), str(plain), str(mnt_pt)], mnt_pt,
                work / "passthrough.out") as pt_proc,
    ):
        targets = {
            "qfs": (mnt_qfs / "circuits", qfs_proc.pid),
            "passthrough": (mnt_pt, pt_proc.pid),
            "plain": (plain, None),
        }
        runs: dict[str, list[float]] = {k: [] for k in targets}
        cold: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for key, (path, _pid) in targets.items():
            seconds, seen = timed(lambda p=path: ls_l(p))
            if seen != count:
                raise RuntimeError(f"{key}: ls -l saw {seen} entries, expected {count}")
            cold[key] = seconds
        say(f"readdir_stat: cold walks {', '.join(f'{k} {v:.3f}s' for k, v in cold.items())}")
        for key, (_path, pid) in targets.items():
            cpu[key] = cpu_seconds(pid) if pid else 0.0
        for rep in range(sizes.walk_reps):
            # Interleaved, so that a slow moment of the machine hits all three alike.
            for key, (path, _pid) in targets.items():
                seconds, seen = timed(lambda p=path: ls_l(p))
                if seen != count:
                    raise RuntimeError(f"{key}: ls -l saw {seen} entries, expected {count}")
                runs[key].append(seconds)
            say(f"readdir_stat: round {rep + 1}/{sizes.walk_reps} "
                + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in runs.items()))
        for key, (_path, pid) in targets.items():
            if pid:
                cpu[key] = cpu_seconds(pid) - cpu[key]
    result: Json = {"entries": count, "repetitions": sizes.walk_reps}
    for key, samples in runs.items():
        median = statistics.median(samples)
        result[key] = {
            "cold_s": round(cold[key], 4),
            "median_s": round(median, 4),
            "min_s": round(min(samples), 4),
            "max_s": round(max(samples), 4),
            "entries_per_s": round(count / median),
            "cold_entries_per_s": round(count / cold[key]),
        }
        if key != "plain":
            result[key]["daemon_cpu_s_per_warm_walk"] = round(cpu[key] / len(samples), 4)
    qfs, pt, disk = (statistics.median(runs[k]) for k in ("qfs", "passthrough", "plain"))
    result["ratio_qfs_vs_passthrough"] = ratio(pt, qfs)  # throughput ratio: higher is better
    result["ratio_qfs_vs_plain"] = ratio(disk, qfs)
    result["ratio_passthrough_vs_plain"] = ratio(disk, pt)
    result["ratio_cold_qfs_vs_passthrough"] = ratio(cold["passthrough"], cold["qfs"])
    result["notes"] = (
        "entries_per_s = entries / median walk; ratios are throughput ratios (>1: qfs faster). "
        "Both FUSE file systems serve readdirplus with 1 s entry/attr timeouts for directories, "
        "so the lstat after readdir is answered from the kernel cache. 'cold' is the first walk "
        "after mounting (plain: first walk after creating the tree, page cache not dropped)."
    )
    result["daemon_log"] = log_findings(data)
    shutil.rmtree(plain)
    return result


# -- (b) cp into /circuits -------------------------------------------------------------------


def cp_argv_groups(names: list[str]) -> list[list[str]]:
    """Names for one cp each; a single group unless argv would exceed half of ARG_MAX."""
    budget = os.sysconf("SC_ARG_MAX") // 2
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        if used + len(name) + 9 > budget and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += len(name) + 9
    return groups


def run_cp(source: Path, names: list[str], target: Path) -> float:
    """`cp -t TARGET names...` run in SOURCE (short relative names keep argv small)."""
    start = time.perf_counter()
    for group in cp_argv_groups(names):
        done = subprocess.run(["cp", "-t", str(target), *group], cwd=source,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"cp into {target} failed ({done.returncode}): "
                               f"{done.stderr[-2000:]}")
    return time.perf_counter() - start


def bench_cp_import(work: Path, sizes: Sizes) -> Json:
    count = sizes.circuits
    source = work / "cp_src"
    source.mkdir()
    names = [f"{name_of(i)}.qasm" for i in range(count)]
    for i, name in enumerate(names):
        (source / name).write_bytes(program(5, angle=0.001 * (i + 1), tag=f"circuit {i}"))
    for name in names:  # warm the page cache so both copies read from memory
        (source / name).read_bytes()
    processes = len(cp_argv_groups(names))
    say(f"cp_import: {count} files, {processes} cp process(es); plain baseline first")
    plain_runs = []
    for rep in range(sizes.plain_cp_reps):
        target = work / f"cp_plain_{rep}"
        target.mkdir()
        plain_runs.append(run_cp(source, names, target))
        shutil.rmtree(target)
    plain_s = statistics.median(plain_runs)
    say(f"cp_import: plain median {plain_s:.3f}s; now into an empty qfs")
    data, mnt = work / "data_cp", work / "mnt_cp"
    last = name_of(count - 1)
    with qfs_mount(data, mnt) as proc:
        cpu_before, threads_before = cpu_seconds(proc.pid), thread_cpu(proc.pid)
        cp_s = run_cp(source, names, mnt / "circuits")
        cp_end = time.perf_counter()
        cpu_cp = cpu_seconds(proc.pid) - cpu_before
        threads_cp = thread_cpu_delta(proc.pid, threads_before)
        polls = 0
        while True:
            polls += 1
            if last in os.listdir(mnt / "search" / f"name:{last}"):
                break
            if time.perf_counter() - cp_end > 120:
                raise RuntimeError(f"{last} not searchable 120 s after cp ended")
        searchable_s = time.perf_counter() - cp_end
        listed = len(os.listdir(mnt / "circuits"))
        first_ok = (mnt / "circuits" / name_of(0) / "latest.qasm").read_bytes() == (
            source / names[0]
        ).read_bytes()
    say(f"cp_import: qfs {cp_s:.3f}s, last searchable after {searchable_s * 1000:.1f} ms")
    if listed != count or not first_ok:
        raise RuntimeError(f"after cp, /circuits lists {listed} of {count} "
                           f"(content of the first {'matches' if first_ok else 'differs'})")
    result = {
        "files": count,
        "cp_processes": processes,
        "plain": {"runs_s": [round(s, 4) for s in plain_runs], "median_s": round(plain_s, 4),
                  "files_per_s": round(count / plain_s)},
        "qfs": {"cp_s": round(cp_s, 4), "circuits_per_s": round(count / cp_s, 1),
                "daemon_cpu_s_during_cp": round(cpu_cp, 3),
                "daemon_thread_cpu_s_during_cp": threads_cp,
                "last_searchable_after_cp_s": round(searchable_s, 4),
                "search_polls": polls},
        "ratio_qfs_vs_plain": ratio(plain_s, cp_s),
        "notes": "qfs figure is a single run into a fresh mount; plain is the median of "
                 f"{sizes.plain_cp_reps} runs into fresh directories on the same disk.",
        "daemon_log": log_findings(data),
    }
    shutil.rmtree(source)
    return result


def bench_similar(work: Path, data: Path, count: int, samples: int) -> Json:
    """coreutils' `ls -l` of the similar/ directories of `samples` circuits spread over the
    corpus: a listing, then a lookup and a readlink of each link, each ranking the circuit
    against every other."""
    mnt = work / "mnt_similar"
    times: list[float] = []
    links = 0
    with qfs_mount(data, mnt):
        for i in range(0, count, max(1, count // samples)):
            argv = ["ls", "-l", str(mnt / "circuits" / name_of(i) / "similar")]
            elapsed, done = timed(functools.partial(subprocess.run, argv, check=True,
                                                    capture_output=True, text=True))
            times.append(elapsed)
            links = len(done.stdout.splitlines()) - 1
    say(f"similar {count}: first ls -l {times[0] * 1e3:.1f} ms, then p50 "
        f"{statistics.median(times[1:]) * 1e3:.1f} ms ({links} links)")
    return {"circuits": count, "links_per_directory": links, "first_ls_l_s": round(times[0], 4),
            "ls_l_after_the_first": latency(times[1:]),
            "notes": "the first listing after mounting builds the shape index"}


def walk_commands(work: Path) -> tuple[tuple[str, list[str]], ...]:
    """Each tree walker's command line, the tree to walk to be added at its end (tar writes
    a file: with /dev/null as its archive, GNU tar reads no file's contents)."""
    return (("find", ["find"]), ("du_s", ["du", "-s"]),
            ("grep_R", ["grep", "-R", "-l", "-e", "ccx"]),
            ("tar", ["tar", "cf", str(work / "walk.tar")]))


def bench_tree_walk(work: Path, count: int, baseline: str | None, rounds: int,
                    dynamic: bool) -> Json:
    """Tree walkers over /circuits on a fresh mount: `find` lists every circuit directory
    (their views need exact sizes), `du -s` stats every file as well, `grep -R` reads every
    file, following each similar/ link to the circuit it names, and `tar` reads every file
    without following links. Each tool walks once (first), then `rounds` times again.

    With a baseline revision, that tree is mounted beside this one on a copy of the same
    data directory and each walk alternates between the two (the order swapped every
    round), so both meet the same moments of a noisy machine: medians of the walks' times
    and of the daemon's CPU time, and the FUSE requests of one more walk of each, counted
    per circuit (root only). With `dynamic`, the corpus is dynamic_program's."""
    data = work / "data_walk"
    load = bulk_load(data, count, dynamic)
    trees = {"qfs": (REPO, data)}
    with contextlib.ExitStack() as stack:
        if baseline:
            shutil.copytree(data, work / "data_walk_baseline")
            trees["baseline"] = (stack.enter_context(worktree(baseline)),
                                 work / "data_walk_baseline")
        mounts = {}
        for tag, (tree, tree_data) in trees.items():
            mnt = work / f"mnt_walk_{tag}"
            log = tree_data.parent / f"{tree_data.name}-daemon.out"  # where log_findings looks
            mounts[tag] = (mnt, stack.enter_context(
                mounted(qfs_command(mnt, tree_data), mnt, log, cwd=tree)))
        walks: Json = {tag: {} for tag in trees}
        for tool, argv in walk_commands(work):
            seconds: dict[str, list[float]] = {tag: [] for tag in trees}
            cpu: dict[str, list[float]] = {tag: [] for tag in trees}
            for attempt in range(rounds + 1):
                for tag in (list(trees) if attempt % 2 == 0 else list(trees)[::-1]):
                    mnt, proc = mounts[tag]
                    before = cpu_seconds(proc.pid)
                    elapsed, done = timed(functools.partial(
                        subprocess.run, [*argv, str(mnt / "circuits")], check=True,
                        capture_output=True, text=True))
                    seconds[tag].append(elapsed)
                    cpu[tag].append(cpu_seconds(proc.pid) - before)
                    if tool in ("find", "grep_R"):
                        walks[tag][f"{tool}_lines"] = len(done.stdout.splitlines())
            for tag, (mnt, _proc) in mounts.items():
                again = seconds[tag][1:]
                walks[tag][f"{tool}_first_s"] = round(seconds[tag][0], 3)
                walks[tag][f"{tool}_again_s"] = round(statistics.median(again), 3)
                walks[tag][f"{tool}_again_daemon_cpu_s"] = round(statistics.median(cpu[tag][1:]), 3)
                walks[tag][f"{tool}_again_all_s"] = [round(x, 3) for x in again]
                requests = fuse_requests(mnt, functools.partial(
                    subprocess.run, [*argv, str(mnt / "circuits")], capture_output=True))
                if requests is not None:
                    walks[tag][f"{tool}_requests_per_circuit"] = {
                        op: round(n / count, 2) for op, n in requests.items()}
                say(f"tree walk {count} ({tag}): {' '.join(argv[:2])} first "
                    f"{seconds[tag][0]:.2f} s, again {statistics.median(again):.2f} s")
    report: Json = {"circuits": count, "versions_per_circuit": 1, "load_s": load["total_s"],
                    "programs": "OpenQASM 3, dynamic" if dynamic else "OpenQASM 2",
                    "rounds_again": rounds, **walks.pop("qfs"),
                    "notes": "on one mount, each tool in turn: its first walk, then the walks "
                             "again; medians of those"}
    if baseline:
        report["baseline"] = {"revision": baseline, **walks["baseline"]}
        report["qfs_over_baseline_again"] = {
            tool: {"time": ratio(report[f"{tool}_again_s"],
                                 report["baseline"][f"{tool}_again_s"]),
                   "daemon_cpu": ratio(report[f"{tool}_again_daemon_cpu_s"],
                                       report["baseline"][f"{tool}_again_daemon_cpu_s"])}
            for tool, _ in walk_commands(work)}
    return report


# -- (c) search ------------------------------------------------------------------------------


def query_mix(count: int, sizes: Sizes, seed: int) -> dict[str, list[str]]:
    """Query strings per kind, each string distinct where the kind allows it.

    Every distinct string is a new /search directory (a kernel lookup as well as a readdir),
    so repeats of one string differ only by trailing spaces, which Whoosh ignores;
    `name_repeat` repeats one string exactly to show what the kernel's entry cache saves.
    """
    rng = random.Random(seed)
    reps = min(sizes.search_reps, count)

    def spaced(query: str, n: int) -> list[str]:
        return [query + " " * i for i in range(n)]

    return {
        "name": [f"name:{name_of(i)}" for i in rng.sample(range(count), reps)],
        "name_repeat": [f"name:{name_of(rng.randrange(count))}"] * reps,
        "tag": spaced("tag:x", reps),
        "gate_qubits": spaced("gate:cx qubits:5", sizes.broad_reps),
        "qubits_range": spaced("qubits:[2 TO 5]", sizes.broad_reps),
    }


QUERY_NOTES = {
    "name": "selective: one random circuit per query (1 hit)",
    "name_repeat": "the same name query repeated (kernel entry cache warm after the first)",
    "tag": f"selective: tag x on 1 circuit in {TAG_EVERY}",
    "gate_qubits": "broad: the 5-qubit quarter of the corpus (capped at search_result_limit)",
    "qubits_range": "broad: every circuit (capped at search_result_limit)",
}


def time_queries(run: Callable[[str], list[str]], mix: dict[str, list[str]]) -> Json:
    """Latency per kind, after one warm-up query per kind; hits from the first query."""
    out: Json = {}
    for kind, queries in mix.items():
        warm = run(queries[0].rstrip() + "  " * len(queries))  # a string no timed query uses
        samples = []
        for query in queries:
            start = time.perf_counter()
            run(query)
            samples.append(time.perf_counter() - start)
        out[kind] = {**latency(samples), "hits": len(warm)}
    return out


def ls_l_of_query(directory: Path) -> Json:
    """coreutils' `ls -l` of a query directory the kernel has listed already, twice: a
    lookup and the link's target for every hit, as a user who looks at the results pays."""
    os.listdir(directory)
    samples = [timed(lambda: subprocess.run(["ls", "-l", str(directory)], check=True,
                                            stdout=subprocess.DEVNULL))[0] for _ in range(2)]
    return latency(samples)


def raw_whoosh(index_dir: Path) -> tuple[Callable[[str], list[str]], Callable[[], None]]:
    """Whoosh alone on qfs's index: one searcher, the same parser setup (fields, aliases)."""
    from whoosh import index, qparser
    from whoosh.qparser.plugins import FieldAliasPlugin

    ix = index.open_dir(str(index_dir))
    searcher = ix.searcher()
    parser = qparser.MultifieldParser(["title", "description", "tags", "gates", "author"],
                                      ix.schema)
    # qfs accepts tag:/gate:/qubit: and qubits:>3; without these plugins raw Whoosh would
    # search a field that does not exist and the comparison would be meaningless.
    parser.add_plugin(FieldAliasPlugin({"tags": ["tag"], "gates": ["gate"],
                                        "qubits": ["qubit", "num_qubits"]}))
    parser.add_plugin(qparser.GtLtPlugin())

    def run(query: str) -> list[str]:
        return [hit["name"] for hit in searcher.search(parser.parse(query), limit=10000)]

    def close() -> None:
        searcher.close()
        ix.close()

    return run, close


def lmdb_listing_floor(data: Path, hits: int, reps: int) -> Json:
    """Reading `hits` circuit names in one LMDB read transaction (a cursor over the names
    table, decoded to str): what any index stored there pays to list that many names."""
    import lmdb

    env = lmdb.open(str(data / "meta.lmdb"), readonly=True, lock=False, max_dbs=32)
    try:
        names = env.open_db(b"names", create=False)
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            with env.begin(buffers=False) as txn:
                cursor = txn.cursor(db=names)
                cursor.first()
                listed = [key.decode() for key in itertools.islice(
                    cursor.iternext(values=False), hits)]
            samples.append(time.perf_counter() - start)
    finally:
        env.close()
    return {**latency(samples), "hits": len(listed)}


def bench_search(work: Path, data: Path, count: int, sizes: Sizes) -> Json:
    mix = query_mix(count, sizes, seed=count)
    mnt = work / f"mnt_search_{count}"
    say(f"search {count}: through the mount")
    with qfs_mount(data, mnt):
        first_s, _hits = timed(lambda: len(os.listdir(mnt / "search" / "name:c000000")))
        through_mount = time_queries(lambda q: os.listdir(mnt / "search" / q), mix)
        ls_l = {kind: ls_l_of_query(mnt / "search" / queries[0]) for kind, queries in mix.items()}
    say(f"search {count}: LMDB listing floor")
    floor = {kind: lmdb_listing_floor(data, through_mount[kind]["hits"], len(queries))
             for kind, queries in mix.items()}
    say(f"search {count}: raw Whoosh")
    run, close = raw_whoosh(data / "index")
    try:
        raw = time_queries(run, mix)
    finally:
        close()
    say(f"search {count}: qfs SearchIndex in-process (no FUSE)")
    from levels.config import load_config
    from levels.fabric import Fabric

    fabric = Fabric(data, load_config())
    try:
        api = time_queries(fabric.search.search, mix)
    finally:
        fabric.close()
    kinds: Json = {}
    for kind in mix:
        m, r, a = through_mount[kind], raw[kind], api[kind]
        kinds[kind] = {
            "query": mix[kind][0].rstrip(),
            "about": QUERY_NOTES[kind],
            "mount": m,
            "qfs_api": a,
            "raw_whoosh": r,
            "lmdb_listing_floor": floor[kind],
            "coreutils_ls_l": ls_l[kind],
            "ratio_p50_mount_vs_raw": ratio(m["p50_ms"], r["p50_ms"]),
            "ratio_p50_api_vs_lmdb_floor": ratio(a["p50_ms"], floor[kind]["p50_ms"]),
            "ratio_p50_api_vs_raw": ratio(a["p50_ms"], r["p50_ms"]),
            "hits_agree": m["hits"] == r["hits"] == a["hits"],
        }
        say(f"search {count}: {kind:12s} mount p50 {m['p50_ms']:8.2f} ms p99 {m['p99_ms']:8.2f}"
            f" | api p50 {a['p50_ms']:8.2f} ms | raw Whoosh p50 {r['p50_ms']:8.2f} ms"
            f" | LMDB floor p50 {floor[kind]['p50_ms']:8.2f} ms | hits {m['hits']}"
            f" | ls -l {ls_l[kind]['p50_ms']:8.1f} ms")
    return {
        "circuits": count,
        "first_search_after_mount_s": round(first_s, 4),
        "kinds": kinds,
        "notes": "ratios are latency ratios (>1: qfs slower). Repeats of a kind differ only by "
                 "trailing spaces so each is a fresh /search directory (see name_repeat for "
                 "the cached case). qfs_api is Fabric.search.search in this process. "
                 "lmdb_listing_floor reads as many names as the kind returns from LMDB in one "
                 "transaction: the floor of any index kept in the metadata store.",
        "daemon_log": log_findings(data),
    }


# -- (d) LMDB floor --------------------------------------------------------------------------


def bench_lmdb(work: Path, sizes: Sizes) -> Json:
    import lmdb

    path = work / "lmdb_floor"
    env = lmdb.open(str(path), map_size=1 << 30, subdir=True)  # sync on commit, as qfs
    value = program(5) + b"x" * 200  # about a circuit record plus source
    keys = [name_of(i).encode() for i in range(sizes.lmdb_puts)]
    try:
        start = time.perf_counter()
        per_put = []
        for key in keys:
            t = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(key, value)
            per_put.append(time.perf_counter() - t)
        put_s = time.perf_counter() - start
        rng = random.Random(1)
        lookups = [rng.choice(keys) for _ in range(sizes.lmdb_gets)]
        start = time.perf_counter()
        with env.begin() as txn:
            for key in lookups:
                txn.get(key)
        get_s = time.perf_counter() - start
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    return {
        "value_bytes": len(value),
        "synced_puts": sizes.lmdb_puts,
        "puts_per_s": round(sizes.lmdb_puts / put_s),
        "put_p50_ms": round(percentile(per_put, 50) * 1000, 3),
        "put_p99_ms": round(percentile(per_put, 99) * 1000, 3),
        "gets_in_one_txn": sizes.lmdb_gets,
        "gets_per_s": round(sizes.lmdb_gets / get_s),
    }


# -- the report ------------------------------------------------------------------------------


def machine() -> Json:
    """Enough about the machine to tell whether two reports are comparable."""
    import lmdb
    import pyfuse3
    import trio
    import whoosh

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    fs = ""
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, point, kind, *_ = line.split()
            if "/tmp".startswith(point) and len(point) > len(best):
                best, fs = point, kind
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True).stdout.strip())
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tmp_filesystem": fs,
        "versions": {"pyfuse3": pyfuse3.__version__, "trio": trio.__version__,
                     "whoosh": ".".join(map(str, whoosh.__version__)),
                     "lmdb": lmdb.__version__},
        "qfs_git_head": head,
        "qfs_tree_modified": dirty,
    }


def target(value: float | None, goal: float, better: str) -> Json:
    """One goal: `better` is ">=" (at least), "<=" (at most) or "<" (below)."""
    checks = {">=": lambda v: v >= goal, "<=": lambda v: v <= goal, "<": lambda v: v < goal}
    met = value is not None and checks[better](value)
    return {"value": value, "goal": goal, "better": better, "met": met}


def targets(report: Json, big_label: str) -> Json:
    """The issue's goals, read back from the measured sections that completed."""
    out: Json = {}
    walk = report.get("readdir_stat", {})
    if "ratio_qfs_vs_passthrough" in walk:
        out["readdir_stat_qfs_vs_passthrough"] = target(walk["ratio_qfs_vs_passthrough"],
                                                        0.70, ">=")
    cp = report.get("cp_import", {})
    if "qfs" in cp:
        out["cp_circuits_per_s"] = target(cp["qfs"]["circuits_per_s"], 1000, ">=")  # issue 15
        out["cp_last_searchable_after_s"] = target(cp["qfs"]["last_searchable_after_cp_s"],
                                                   1.0, "<=")
    big = report.get("search", {}).get(big_label, {})
    for kind, figures in big.get("kinds", {}).items():
        out[f"search_{big_label}_p50_ms.{kind}"] = target(figures["mount"]["p50_ms"], 20, "<")
    return out


def remove_tree(work: Path) -> None:
    """Remove the scratch tree, but never descend into something still mounted."""
    stuck = []
    for child in work.iterdir():
        if child.is_dir() and os.path.ismount(child):
            subprocess.run(["fusermount3", "-u", "-z", str(child)], capture_output=True)
            if os.path.ismount(child):
                stuck.append(child)
    if stuck:
        say(f"still mounted, leaving {work} in place: {stuck}")
        return
    shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuits", type=int, default=10_000,
                        help="circuits for readdir/stat, cp and the small search (10000)")
    parser.add_argument("--big", type=int, default=100_000,
                        help="circuits for the large search (100000)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 500 / 2000 circuits and few repetitions (~1 min)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--walk-circuits", type=int, default=2000,
                        help="circuits for the find, du, grep -R and tar walks of /circuits "
                             "(2000)")
    parser.add_argument("--walk-rounds", type=int, default=1,
                        help="walks of each tool after its first (1)")
    parser.add_argument("--walk-dynamic", action="store_true",
                        help="walk circuits in OpenQASM 3 with a branch on a measurement, "
                             "whose OpenQASM 2 view cannot be made")
    parser.add_argument("--walk-baseline", metavar="REV",
                        help="also walk qfs as of git revision REV, mounted beside this tree "
                             "on a copy of the same data, walks alternating")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--search-only", action="store_true",
                      help="only load the big corpus and time its searches")
    only.add_argument("--similar-only", action="store_true",
                      help="only load the small corpus and time ls -l of similar/")
    only.add_argument("--tree-walk-only", action="store_true",
                      help="only load WALK circuits and time find, du -s, grep -R and tar of them")
    only.add_argument("--cp-only", action="store_true",
                      help="only time one cp of CIRCUITS files, into qfs and a plain directory")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch tree under /tmp (its path goes to stderr)")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(circuits=500, big=2000, walk_reps=5, plain_cp_reps=2, search_reps=10,
                     broad_reps=5, lmdb_puts=200, lmdb_gets=10_000, walk_circuits=200)
    return Sizes(circuits=args.circuits, big=args.big, walk_circuits=args.walk_circuits)


def label(count: int) -> str:
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks unmount and clean up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("bench_circuitfs: needs /dev/fuse and fusermount3", file=sys.stderr)
        return 2
    report: Json = {"machine": machine(), "sizes": dataclasses.asdict(sizes)}
    failed = False
    work = Path(tempfile.mkdtemp(prefix="qfs-bench-", dir="/tmp"))
    say(f"scratch tree {work}")

    def section(name: str, fn: Callable[[], Json]) -> Json:
        nonlocal failed
        try:
            return fn()
        except Exception as exc:
            failed = True
            traceback.print_exc()
            say(f"{name} failed: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"[:4000]}

    try:
        small, big = work / "data_small", work / "data_big"
        loads: Json = {}
        search: Json = {}
        only = {name for name, chosen in (("search", args.search_only),
                                          ("similar", args.similar_only),
                                          ("tree_walk", args.tree_walk_only),
                                          ("cp", args.cp_only)) if chosen}
        if not only or "tree_walk" in only:
            report["tree_walk"] = section("tree_walk", lambda: bench_tree_walk(
                work, sizes.walk_circuits, args.walk_baseline, args.walk_rounds,
                args.walk_dynamic))
        if not only:
            report["lmdb_floor"] = section("lmdb_floor", lambda: bench_lmdb(work, sizes))
        if not only or "similar" in only:
            say(f"bulk loading {sizes.circuits} circuits")
            loads[label(sizes.circuits)] = section("load",
                                                   lambda: bulk_load(small, sizes.circuits))
            report["similar"] = section("similar", lambda: bench_similar(
                work, small, sizes.circuits, sizes.similar_samples))
        if not only:
            report["readdir_stat"] = section("readdir_stat",
                                             lambda: bench_readdir_stat(work, small, sizes))
        if not only or "cp" in only:
            report["cp_import"] = section("cp_import", lambda: bench_cp_import(work, sizes))
        if not only:
            search[label(sizes.circuits)] = section(
                "search small", lambda: bench_search(work, small, sizes.circuits, sizes))
        if not only or "search" in only:
            say(f"bulk loading {sizes.big} circuits")
            loads[label(sizes.big)] = section("load big", lambda: bulk_load(big, sizes.big))
            search[label(sizes.big)] = section(
                "search big", lambda: bench_search(work, big, sizes.big, sizes))
        report["search"] = search
        report["bulk_load"] = loads
        report["targets"] = targets(report, label(sizes.big))
        report["wall_s"] = round(time.monotonic() - STARTED, 1)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            remove_tree(work)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
