"""What each SDK format view costs against calling its converter directly; prints JSON.

  sdk_views  a 20-qubit, 2,000-gate circuit (bench_compiled's): for each of vN.quil,
             vN.cirq.json, vN.braket.json and vN.ll, the first read through the mount (a
             worker parses the version and converts it; the worker has rendered that format
             once before on a warm-up circuit, so its SDK is imported), a second read
             (cached), and in this process levels.sdkformats.render on the parsed circuit,
             the converter alone, with its SDK imported beforehand; interleaved, medians
  events     a reader following /qubits/tasks/<T>/events while `measure q0` is written to
             the task's ctl: from the start of each ctl write to the measurement's line
             read by the follower, p50/p99, beside the ctl write alone (its reply is the
             same measurement), same run

    .venv/bin/python scripts/bench_formats.py [--repeats 3] [--out FILE]

Not a test: it measures, it does not check.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compiled import program
from benchlib import (
    command,
    finish,
    latency,
    mounted,
    qfs_command,
    ratio,
    run_section,
    say,
    timed,
)


def bench_sdk_views(repeats: int) -> dict:
    from levels.qasm import parse_program
    from levels.sdkformats import SDK_FORMATS, render

    samples: dict[str, dict[str, list[float]]] = {
        fmt: {"first": [], "cached": [], "direct": []} for fmt in SDK_FORMATS}
    with tempfile.TemporaryDirectory() as tmp:
        root, data = Path(tmp) / "mnt", Path(tmp) / "data"
        with mounted(qfs_command(root, data), root, Path(tmp) / "daemon.log"):
            warm = program(-1)
            (root / "circuits" / "warm.qasm").write_bytes(warm)
            circuit = parse_program(warm)
            for fmt in SDK_FORMATS:  # every SDK imported, here and in the worker
                (root / "circuits" / "warm" / f"v1.{fmt}").read_bytes()
                render(circuit, fmt)
            for i in range(repeats):
                source = program(i)
                (root / "circuits" / f"c{i}.qasm").write_bytes(source)
                circuit = parse_program(source)
                circuit.name = f"c{i}"
                for fmt in SDK_FORMATS:
                    path = root / "circuits" / f"c{i}" / f"v1.{fmt}"
                    times = samples[fmt]
                    times["first"].append(timed(path.read_bytes)[0])
                    times["cached"].append(timed(path.read_bytes)[0])
                    times["direct"].append(timed(lambda c=circuit, f=fmt: render(c, f))[0])
                    say(f"run {i} {fmt}: view {times['first'][-1]:.3f} s, cached "
                        f"{times['cached'][-1] * 1e3:.1f} ms, direct {times['direct'][-1]:.3f} s")
    report: dict = {"qubits": 20, "gates": 2000, "repeats": repeats}
    for fmt, times in samples.items():
        first, cached, direct = (statistics.median(times[k]) for k in ("first", "cached",
                                                                        "direct"))
        report[fmt] = {"first_read_s": round(first, 3), "cached_read_ms": round(cached * 1e3, 2),
                       "converter_direct_s": round(direct, 3),
                       "first_read_over_direct": ratio(first, direct)}
    return report


def bench_events(measures: int) -> dict:
    import queue
    import threading

    latencies, writes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root, data = Path(tmp) / "mnt", Path(tmp) / "data"
        with mounted(qfs_command(root, data), root, Path(tmp) / "daemon.log"):
            command(root / "qubits" / "ctl", "alloc 1 task=ev")
            ctl = root / "qubits" / "tasks" / "ev" / "ctl"
            arrived: queue.Queue[float] = queue.Queue()
            stream = open(root / "qubits" / "tasks" / "ev" / "events", "rb")  # noqa: SIM115

            def follow() -> None:  # one line per measure, then no read left waiting
                for _ in range(measures):
                    stream.readline()
                    arrived.put(time.perf_counter())

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            for _ in range(measures):
                started = time.perf_counter()
                writes.append(command(ctl, "measure q0"))
                latencies.append(arrived.get(timeout=30) - started)
            follower.join()
            stream.close()
            command(ctl, "release")
    return {"measures": measures,
            "event_latency_ms": latency(latencies), "ctl_write_ms": latency(writes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--measures", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    report: dict = {"benchmark": "formats"}
    run_section(report, "sdk_views", lambda: bench_sdk_views(args.repeats))
    run_section(report, "events", lambda: bench_events(args.measures))
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
