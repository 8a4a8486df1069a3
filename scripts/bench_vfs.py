"""Benchmark the FUSE adapter over levels/vfs against a baseline revision; prints one JSON.

Each round mounts qfs from this tree and from a git worktree of the baseline (the
revision before the tree moved into levels/vfs, by default), alternately, and times on
both the requests whose path the adapter resolves: stat of each kind of file (lookup and
getattr), `ls -l` of a circuit directory, open-read-close of latest.qasm and of a version,
a task ctl command (open, write, close) and cp of new circuits (create, write, release).

    .venv/bin/python scripts/bench_vfs.py [--baseline REV] [--current REV] [--rounds 3]
                                          [--quick] [--out F]
"""

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib import (
    Json,
    command,
    finish,
    mounted,
    qfs_command,
    ratio,
    repeat,
    run_section,
    say,
    worktree,
)

REPO = Path(__file__).resolve().parent.parent
BELL = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\n'


def program(k: int) -> bytes:
    return (f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\nrz({0.001 * (k + 1)}) q[0];\n'
            f"h q[1];\ncx q[1],q[2];\n").encode()


@contextlib.contextmanager
def qfs_from(tree: Path, work: Path, label: str) -> Iterator[Path]:
    """qfs mounted from the sources in `tree` (run from there, its packages come first)."""
    data, mnt = work / f"data_{label}", work / f"mnt_{label}"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        with mounted(qfs_command(mnt, data), mnt, work / f"{label}.out", cwd=tree, env=env):
            yield mnt
    finally:
        shutil.rmtree(data, ignore_errors=True)


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def workload(mnt: Path, repeats: int, copies: int) -> dict[str, list[float]]:
    """Seconds per operation (per cp of `copies` circuits for "cp")."""
    circuits = mnt / "circuits"
    (circuits / "bell.qasm").write_text(BELL)
    for k in range(4):
        (circuits / "bell" / "latest.qasm").write_bytes(program(k))
    command(mnt / "qubits" / "ctl", "alloc 2 task=bench")
    task_ctl = mnt / "qubits" / "tasks" / "bench" / "ctl"
    kinds = {
        "latest.qasm": circuits / "bell" / "latest.qasm",
        "v1.qasm": circuits / "bell" / "v1.qasm",
        "v2.qpy": circuits / "bell" / "v2.qpy",
        "meta.json": circuits / "bell" / "meta.json",
        "qubit_status": mnt / "qubits" / "q5" / "status",
        "task_ctl": task_ctl,
    }
    out: dict[str, list[float]] = {}
    for kind, path in kinds.items():
        out[f"stat_{kind}"] = repeat(lambda p=path: os.stat(p), repeats)
    out["ls_l_circuit"] = repeat(
        lambda: [e.stat(follow_symlinks=False) for e in os.scandir(circuits / "bell")],
        max(repeats // 20, 5))
    out["cat_latest"] = repeat(lambda: read(kinds["latest.qasm"]), repeats)
    out["cat_v1"] = repeat(lambda: read(kinds["v1.qasm"]), repeats)
    out["ctl_set"] = repeat(lambda: command(task_ctl, "set x=1"), repeats)
    source = [program(100 + k) for k in range(copies)]
    started = time.perf_counter()
    for k, text in enumerate(source):
        (circuits / f"c{k}.qasm").write_bytes(text)
    out["cp"] = [time.perf_counter() - started]
    return out


def bench_before_after(baseline: str, current: str, rounds: int, repeats: int,
                       copies: int) -> Json:
    work = Path(tempfile.mkdtemp(prefix="qfs-bench-vfs-"))
    runs: dict[str, dict[str, list[float]]] = {"current": {}, "baseline": {}}
    try:
        with worktree(baseline) as old, \
                (worktree(current) if current else contextlib.nullcontext(REPO)) as new:
            for rnd in range(rounds):
                for label, tree in (("current", new), ("baseline", old)):
                    say(f"round {rnd + 1} of {rounds}: {label}")
                    with qfs_from(tree, work, f"{label}{rnd}") as mnt:
                        for key, samples in workload(mnt, repeats, copies).items():
                            runs[label].setdefault(key, []).extend(samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: Json = {"baseline_revision": baseline, "current_revision": current or "this tree",
                    "rounds": rounds, "repeats": repeats,
                    "cp_circuits": copies, "p50_us": {}, "current_over_baseline": {}}
    for key in runs["current"]:
        medians = {label: statistics.median(runs[label][key]) for label in runs}
        report["p50_us"][key] = {label: round(m * 1e6, 1) for label, m in medians.items()}
        report["current_over_baseline"][key] = ratio(medians["current"], medians["baseline"])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="eef0891^",
                        help="revision to compare with (default: before levels/vfs)")
    parser.add_argument("--current", default="",
                        help="revision to measure (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args()
    repeats, copies = (100, 20) if args.quick else (400, 100)
    report: Json = {}
    run_section(report, "vfs_before_after",
                lambda: bench_before_after(args.baseline, args.current, args.rounds,
                                                 repeats, copies))
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
