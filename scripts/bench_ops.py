"""Benchmark the operations side of qfs; prints one JSON (not a test).

  metrics_scrape   read /.qfs/metrics with every level populated (circuits, tasks,
                   checkpoints, a workflow), p50/p99; baseline: reading a plain file of the
                   same size on the same disk. Goal: p50 < 10 ms.
  cache            the cache hit rate after a workflow that reruns its circuits (the reference
                   alarms below 0.3)
  migration        `migrate device=lab` of a live 20-qubit state through the mount; baseline:
                   serializing and decoding the same state in process (what migration must do)

    .venv/bin/python scripts/bench_ops.py [--quick] [--out FILE]
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import command, finish, latency, mounted, qfs_command, say

CONFIG = """live_qubit_mgr:
  devices:
    - {name: eagle, qubits: 127, topology: heavy_hex}
    - {name: lab, qubits: 24, topology: linear, seed: 3}
"""
BELL = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\n'
LAYER = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[20] q;\n" + "".join(
    f"h q[{i}];\nrz({0.1 * i + 0.05}) q[{i}];\ncx q[{i}], q[{(i + 1) % 20}];\n"
    for i in range(20))


def wait_done(mnt: Path, workflow: str) -> None:
    deadline = time.monotonic() + 300
    while not (mnt / "workflows" / workflow / "status").read_text().startswith("done"):
        if time.monotonic() > deadline:
            raise RuntimeError("workflow did not finish")
        time.sleep(0.1)


def populate(mnt: Path, circuits: int) -> None:
    for i in range(circuits):
        (mnt / "circuits" / f"c{i:04d}.qasm").write_text(BELL + f"// {i}\n")
    command(mnt / "qubits" / "ctl", "alloc 4 task=p topology=linear")


def bench_scrape(mnt: Path, base: Path, reps: int) -> dict:
    metrics = mnt / ".qfs" / "metrics"
    plain = base / "plain-metrics.txt"
    plain.write_text(metrics.read_text())
    ours, baseline = [], []
    for _ in range(reps):
        started = time.perf_counter()
        metrics.read_bytes()
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        plain.read_bytes()
        baseline.append(time.perf_counter() - started)
    result = {"bytes": plain.stat().st_size, "qfs": latency(ours),
              "plain_file": latency(baseline)}
    result["goal_p50_under_10ms"] = result["qfs"]["p50_ms"] < 10
    return result


def bench_cache(mnt: Path) -> dict:
    stages = "".join(f"  - name: s{i}\n    circuit: bell\n    shots: 100\n" for i in range(6))
    (mnt / "circuits" / "bell.qasm").write_text(BELL)
    for run in range(2):
        (mnt / "workflows" / "rerun.yaml").write_text(f"stages:\n{stages}")
        wait_done(mnt, "rerun")
        say(f"workflow run {run + 1} done")
    values = {line.split()[0]: float(line.split()[1])
              for line in (mnt / ".qfs" / "metrics").read_text().splitlines()
              if line and not line.startswith("#")}
    rate = values["qfs_cache_hit_rate"]
    return {"workflow": "6 stages of the same circuit, run twice", "cache_hit_rate": rate,
            "above_reference_alarm_0.3": rate >= 0.3}


def bench_migration(mnt: Path, reps: int) -> dict:
    from levels.stateformats import FormatOptions, decode, encode

    (mnt / "circuits" / "layer.qasm").write_text(LAYER)
    times = []
    for i in range(reps):
        command(mnt / "qubits" / "ctl", f"alloc 20 task=m{i} topology=linear")
        command(mnt / "qubits" / "tasks" / f"m{i}" / "ctl", "apply layer")
        times.append(command(mnt / "qubits" / "tasks" / f"m{i}" / "ctl", "migrate device=lab"))
        command(mnt / "devices" / "lab" / "tasks" / f"m{i}" / "ctl", "release")
    rng = np.random.default_rng(1)
    vector = rng.normal(size=2**20) + 1j * rng.normal(size=2**20)
    vector /= np.linalg.norm(vector)
    direct = []
    for _ in range(reps):
        started = time.perf_counter()
        decode(encode(vector, "statevector", FormatOptions()).payload)
        direct.append(time.perf_counter() - started)
    mount, base = latency(times), latency(direct)
    return {"qubits": 20, "mount_migrate": mount, "in_process_serialize_decode": base,
            "ratio_mount_over_direct": round(mount["p50_ms"] / base["p50_ms"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qfs-bench-ops-"))
    mnt, data = base / "mnt", base / "data"
    (base / "qfs.yaml").write_text(CONFIG)
    report: dict = {"benchmark": "ops", "quick": args.quick}
    try:
        with mounted(qfs_command(mnt, data, "--config", str(base / "qfs.yaml")), mnt,
                     base / "daemon.log"):
            say("populating")
            populate(mnt, 50 if args.quick else 500)
            say("metrics scrape")
            report["metrics_scrape"] = bench_scrape(mnt, base, 30 if args.quick else 200)
            say("cache hit rate on a rerun workflow")
            report["cache"] = bench_cache(mnt)
            say("migration of a 20-qubit state")
            report["migration"] = bench_migration(mnt, 2 if args.quick else 5)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
