"""What running Qiskit in supervised worker processes costs; prints one JSON document.

  parse_round_trip  one program checked, parsed and measured in this process vs sent to a
                    worker process and back (levels/workers.py), medians and p99 of many
  cp_before_after   one `cp` of N small .qasm files into the current qfs, into qfs as it
                    was at a baseline revision (a git worktree of it, mounted from its own
                    sources), and into a plain directory; runs interleaved, medians

    .venv/bin/python scripts/bench_workers.py [--circuits 2000] [--baseline 5fd2ba7]
                                              [--out FILE]

Not a test: it measures, it does not check.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_circuitfs import name_of, program, run_cp
from benchlib import (
    finish,
    latency,
    mounted,
    qfs_command,
    ratio,
    repeat,
    run_section,
    say,
    worktree,
)

REPO = Path(__file__).resolve().parent.parent


def bench_parse_round_trip() -> dict:
    from levels import qasm
    from levels.workers import Limits, WorkerPool

    small = program(5, angle=0.1, tag="small")
    large = small + b"rz(0.1) q[0];\ncx q[0], q[1];\n" * 500
    limits = qasm.ProgramLimits()
    pool = WorkerPool(1, Limits())
    try:
        pool.run(qasm.prepare, small, limits)  # start the worker outside the timing
        report = {}
        for label, source in (("small", small), ("1000_ops", large)):
            here = repeat(lambda s=source: qasm.prepare(s, limits), 300)
            there = repeat(lambda s=source: pool.run(qasm.prepare, s, limits), 300)
            report[label] = {"bytes": len(source), "in_process": latency(here, "us", 1),
                             "worker": latency(there, "us", 1),
                             "worker_over_in_process": ratio(statistics.median(there),
                                                             statistics.median(here))}
        return report
    finally:
        pool.shutdown()


def cp_into_qfs(tree: Path, source: Path, names: list[str], work: Path, label: str) -> float:
    """Mount qfs from the sources in `tree` (its own packages come first on sys.path when
    run from there), cp into it, unmount."""
    data, mnt = work / f"data_{label}", work / f"mnt_{label}"
    try:
        with mounted(qfs_command(mnt, data), mnt, work / f"{label}.out", cwd=tree):
            return run_cp(source, names, mnt / "circuits")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def bench_cp_before_after(count: int, baseline: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="qfs-bench-workers-"))
    try:
        source = work / "src"
        source.mkdir()
        names = [f"{name_of(i)}.qasm" for i in range(count)]
        for i, name in enumerate(names):
            (source / name).write_bytes(program(5, angle=0.001 * (i + 1), tag=f"c {i}"))
        runs: dict[str, list[float]] = {"current": [], "baseline": [], "plain": []}
        with worktree(baseline) as old:
            for rep in range(3):
                say(f"cp_before_after: round {rep + 1} of 3")
                for label, tree in (("current", REPO), ("baseline", old)):
                    runs[label].append(cp_into_qfs(tree, source, names, work, f"{label}{rep}"))
                target = work / f"plain{rep}"
                target.mkdir()
                runs["plain"].append(run_cp(source, names, target))
                shutil.rmtree(target)
        medians = {k: statistics.median(v) for k, v in runs.items()}
        return {
            "files": count, "baseline_revision": baseline,
            "circuits_per_s": {k: round(count / v, 1) for k, v in medians.items()},
            "runs_s": {k: [round(s, 3) for s in v] for k, v in runs.items()},
            "current_over_baseline": ratio(medians["baseline"], medians["current"]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuits", type=int, default=2000)
    parser.add_argument("--baseline", default="5fd2ba7",
                        help="git revision to compare with (default: before worker processes)")
    parser.add_argument("--quick", action="store_true", help="200 circuits instead")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.circuits = 200
    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": "2-core development machine"}
    run_section(report, "parse_round_trip", bench_parse_round_trip)
    run_section(report, "cp_before_after",
                lambda: bench_cp_before_after(args.circuits, args.baseline))
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
