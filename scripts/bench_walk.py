"""The issue's first two rows, side by side in one run: an `ls -l`-style walk of /circuits
(readdir, then stat of every circuit), coreutils' own `ls -l` of it, and a cat of every
circuit's latest.qasm, on qfs from this tree, on qfs from a baseline revision (a git
worktree, the same data directory), on the in-memory pyfuse3 floor
(../shared/perf/fuse_floor.py) and on a plain directory. Rounds alternate between the
trees; each figure is the median over the rounds of each round's median of three walks
(after one that fills the kernel's caches).

    .venv/bin/python scripts/bench_walk.py [--circuits 10000] [--baseline REV] [--rounds 3]
                                           [--out F]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import Json, finish, mounted, qfs_command, ratio, say, worktree

REPO = Path(__file__).resolve().parent.parent
FLOOR = REPO.parent / "shared" / "perf" / "fuse_floor.py"
BODY = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\ncx q[0], q[1];\n'


def walk(root: Path, times: int = 3) -> Json:
    """Medians of `times` walks: seconds of listdir + stat of each circuit, and of
    open-read-close of each latest.qasm. Medians, not minima: a minimum hides the pauses
    (a full garbage collection) that a user meets every few listings. Paths are joined as
    strings, as ../shared/perf/walk.py does, so the client costs as little as it can."""
    circuits = f"{root}/circuits"
    listings, cats, coreutils = [], [], []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run(["ls", "-l", circuits], stdout=subprocess.DEVNULL, check=True)
        coreutils.append(time.perf_counter() - started)
        started = time.perf_counter()
        names = os.listdir(circuits)
        for name in names:
            os.stat(f"{circuits}/{name}")
        listed = time.perf_counter()
        for name in names:
            with open(f"{circuits}/{name}/latest.qasm", "rb") as f:
                f.read()
        done = time.perf_counter()
        listings.append(listed - started)
        cats.append(done - listed)
    return {"ls_l_s": statistics.median(listings), "cat_all_s": statistics.median(cats),
            "coreutils_ls_l_s": statistics.median(coreutils)}


def fill(work: Path, data: Path, n: int) -> None:
    """n circuits copied into qfs with one cp, and the same files in a plain tree."""
    sources = work / "src"
    sources.mkdir()
    for i in range(n):
        (sources / f"c{i}.qasm").write_text(f"{BODY}// {i}\n")
        plain = work / "plain" / "circuits" / f"c{i}"
        plain.mkdir(parents=True)
        (plain / "latest.qasm").write_text(BODY)
    mnt = work / "fill"
    with mounted(qfs_command(mnt, data), mnt, work / "fill.out"):
        subprocess.run(["sh", "-c", f'cp "{sources}"/*.qasm "{mnt}/circuits/"'], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuits", type=int, default=10_000)
    parser.add_argument("--baseline", default="5f6e03b")  # before latest.qasm kept its pages
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 circuits, 2 rounds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.circuits, args.rounds = 2_000, 2
    work = Path(tempfile.mkdtemp(prefix="qfs-walk-"))
    data = work / "data"
    report: Json = {"circuits": args.circuits, "baseline": args.baseline}
    samples: dict[str, list[Json]] = {"qfs": [], "qfs_without_xattrs": [], "baseline": [],
                                      "floor": [], "plain": []}
    without_xattrs = work / "no-xattrs.yaml"
    without_xattrs.write_text("performance:\n  extended_attributes: false\n")
    try:
        say(f"walk: {args.circuits} circuits")
        fill(work, data, args.circuits)
        floor_cmd = [str(REPO / ".venv" / "bin" / "python"), str(FLOOR), "",
                     str(args.circuits)]
        with worktree(args.baseline) as old:
            for round_ in range(args.rounds):
                say(f"walk: round {round_ + 1}")
                for label, tree, extra in (
                        ("qfs", REPO, ()), ("baseline", old, ()),
                        ("qfs_without_xattrs", REPO, ("--config", str(without_xattrs)))):
                    mnt = work / label
                    with mounted(qfs_command(mnt, data, *extra), mnt, work / f"{label}.out",
                                 cwd=tree):
                        walk(mnt)  # the kernel's caches filled once, as for every tree
                        samples[label].append(walk(mnt))
                mnt = work / "floor"
                floor_cmd[2] = str(mnt)
                with mounted(floor_cmd, mnt, work / "floor.out"):
                    walk(mnt)
                    samples["floor"].append(walk(mnt))
                samples["plain"].append(walk(work / "plain"))
        for label, rounds in samples.items():
            report[label] = {k: round(statistics.median(r[k] for r in rounds), 4)
                             for k in ("ls_l_s", "cat_all_s", "coreutils_ls_l_s")}
            report[label]["reads_per_s"] = round(args.circuits / report[label]["cat_all_s"])
        ls_l = ratio(report["floor"]["ls_l_s"], report["qfs"]["ls_l_s"])
        cat = ratio(report["floor"]["cat_all_s"], report["qfs"]["cat_all_s"])
        report["ratios (floor time / qfs time)"] = {
            "ls_l": {"value": ls_l, "goal": 0.9, "better": ">=", "met": (ls_l or 0) >= 0.9},
            "cat": {"value": cat, "goal": 0.8, "better": ">=", "met": (cat or 0) >= 0.8},
            # coreutils' ls -l also asks every entry for security.selinux and both POSIX
            # ACLs: the floor answers ENOSYS once and the kernel stops asking.
            "coreutils ls -l": ratio(report["floor"]["coreutils_ls_l_s"],
                                     report["qfs"]["coreutils_ls_l_s"]),
            "coreutils ls -l, extended_attributes false": ratio(
                report["floor"]["coreutils_ls_l_s"],
                report["qfs_without_xattrs"]["coreutils_ls_l_s"]),
            "baseline coreutils ls -l": ratio(report["floor"]["coreutils_ls_l_s"],
                                              report["baseline"]["coreutils_ls_l_s"]),
            "baseline ls_l": ratio(report["floor"]["ls_l_s"], report["baseline"]["ls_l_s"]),
            "baseline cat": ratio(report["floor"]["cat_all_s"],
                                  report["baseline"]["cat_all_s"]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
