"""Scale-out side by side: the embedded default (LMDB + a local blob directory) against the
shared backends (PostgreSQL + S3 from scripts/cluster.sh, on this machine), in one run.

Sections, each through real mounts:
  cp_cat         cp of N circuits into /circuits (circuits/s), then cat of every v1.qasm
                 (circuits/s): embedded, then shared
  checkpoint     checkpoint of a 20-qubit state (statevector, sealed): embedded, then shared
  two_hosts      two mounts on the shared backends: cross-host visibility lag of a new
                 circuit (A writes, B lists it; p50/p99), and allocation latency with both
                 hosts allocating and releasing at once (p50/p99)
  dask_vs_local  16 runs of 20-qubit circuits (one after another through a task's ctl) with
                 local worker processes, then on a Dask scheduler with two workers

Usage: .venv/bin/python scripts/bench_scaleout.py [--quick] [--out bench-results/x.json]
Progress goes to stderr; the JSON document to stdout.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    Json,
    command,
    finish,
    latency,
    load,
    mounted,
    qfs_command,
    ratio,
    run_section,
    say,
)

REPO = Path(__file__).resolve().parent.parent
CIRCUIT = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[3] c;
h q[0];
cx q[0], q[1];
rz({angle}) q[2];
c = measure q;
"""
STATE20 = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[20] q;\n" + "".join(
    f"ry(0.{i + 1}) q[{i}];\n" for i in range(20)) + "".join(
    f"cx q[{i}], q[{i + 1}];\n" for i in range(19))


@contextlib.contextmanager
def cluster(work: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, QFS_CLUSTER_DIR=str(work / "cluster"))
    script = str(REPO / "scripts" / "cluster.sh")
    done = subprocess.run(["bash", script, "up"], env=env, capture_output=True, text=True,
                          check=True)
    values = {}
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = value.strip("'")
    os.environ.update({k: v for k, v in values.items() if k.startswith("AWS_")})
    try:
        yield values
    finally:
        subprocess.run(["bash", script, "down"], env=env, capture_output=True)
        elsewhere = work / "cluster" / "pg.dir"
        if elsewhere.exists():
            shutil.rmtree(elsewhere.read_text().strip(), ignore_errors=True)


def fresh_database(servers: dict[str, str], name: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(servers["QFS_METADATA_DSN"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return {"dsn": servers["QFS_METADATA_DSN"].rsplit("/", 1)[0] + f"/{name}",
            "endpoint": servers["QFS_S3_ENDPOINT"], "bucket": name}


def shared_config(work: Path, where: dict[str, str]) -> Path:
    path = work / f"{where['bucket']}.yaml"
    path.write_text(json.dumps({
        "cross_level": {"metadata_backend": "postgresql", "metadata_dsn": where["dsn"]},
        "state_store": {"storage_backend": "s3", "s3_endpoint": where["endpoint"],
                        "s3_bucket": where["bucket"]},
    }))
    return path


@contextlib.contextmanager
def host(work: Path, name: str, config: Path | None) -> Iterator[Path]:
    """One qfs mount on work/mnt-NAME with the shared key (and `config`), for the block."""
    root = work / f"mnt-{name}"
    argv = qfs_command(root, work / f"data-{name}", "--key-file", str(work / "shared.key"),
                       *(["--config", str(config)] if config else []))
    with mounted(argv, root, work / f"{name}.log"):
        yield root


def cp_cat(root: Path, source: Path, names: list[str]) -> Json:
    started = time.perf_counter()
    subprocess.run(["cp", "-t", str(root / "circuits"), *names], cwd=source, check=True)
    cp_s = time.perf_counter() - started
    started = time.perf_counter()
    for name in names:
        (root / "circuits" / name.removesuffix(".qasm") / "v1.qasm").read_bytes()
    cat_s = time.perf_counter() - started
    return {"circuits": len(names), "cp_seconds": round(cp_s, 3),
            "cp_circuits_per_s": round(len(names) / cp_s, 1), "cat_seconds": round(cat_s, 3),
            "cat_circuits_per_s": round(len(names) / cat_s, 1)}


def checkpoint(root: Path) -> Json:
    (root / "circuits" / "state20.qasm").write_text(STATE20)
    command(root / "qubits" / "ctl", "alloc 20 task=big topology=any")
    command(root / "qubits" / "tasks" / "big" / "ctl", "apply state20")
    started = time.perf_counter()
    command(root / "qubits" / "tasks" / "big" / "ctl", "checkpoint big20 format=statevector")
    seconds = time.perf_counter() - started
    meta = json.loads((root / "states" / "big20" / "meta.json").read_text())
    return {"seconds": round(seconds, 3), "stored_bytes": meta["stored_bytes"]}


def bench_backends(work: Path, servers: dict[str, str], count: int) -> Json:
    source = work / "source"
    source.mkdir()
    names = [f"c{i:05d}.qasm" for i in range(count)]
    for i, name in enumerate(names):
        (source / name).write_text(CIRCUIT.format(angle=f"0.{i + 1}"))
    report: Json = {}
    for label, config in (("embedded", None),
                          ("shared", shared_config(work, fresh_database(servers, "bench1")))):
        say(f"cp_cat and checkpoint: {label}")
        with host(work, label, config) as root:
            report[label] = {"cp_cat": cp_cat(root, source, names),
                             "checkpoint_20_qubits": checkpoint(root), "loadavg": load()}
    e, s = report["embedded"], report["shared"]
    report["shared_over_embedded"] = {
        "cp_throughput": ratio(s["cp_cat"]["cp_circuits_per_s"], e["cp_cat"]["cp_circuits_per_s"]),
        "cat_throughput": ratio(s["cp_cat"]["cat_circuits_per_s"],
                                e["cp_cat"]["cat_circuits_per_s"]),
        "checkpoint_time": ratio(s["checkpoint_20_qubits"]["seconds"],
                                 e["checkpoint_20_qubits"]["seconds"]),
    }
    return report


def bench_two_hosts(work: Path, servers: dict[str, str], rounds: int) -> Json:
    config = shared_config(work, fresh_database(servers, "bench2"))
    with host(work, "host-a", config) as a, host(work, "host-b", config) as b:
        lags = []
        for i in range(rounds):
            (a / "circuits" / f"lag{i}.qasm").write_text(CIRCUIT.format(angle=i))
            written = time.perf_counter()
            while f"lag{i}" not in os.listdir(b / "circuits"):
                time.sleep(0.002)
            lags.append(time.perf_counter() - written)
        for root in (a, b):  # build each host's device model (~1 s) before timing
            command(root / "qubits" / "ctl", "alloc 1 task=warm")
            command(root / "qubits" / "ctl", "release task=warm")
        samples: list[float] = []
        lock = threading.Lock()

        def allocate(root: Path, tag: str) -> None:
            for i in range(rounds // 2):
                started = time.perf_counter()
                command(root / "qubits" / "ctl", f"alloc 4 task={tag}{i} topology=linear")
                took = time.perf_counter() - started
                command(root / "qubits" / "ctl", f"release task={tag}{i}")
                with lock:
                    samples.append(took)

        threads = [threading.Thread(target=allocate, args=(root, tag))
                   for root, tag in ((a, "a"), (a, "x"), (b, "b"), (b, "y"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"visibility_lag": latency(lags, digits=2),
                "allocation_2_hosts_x_2_allocators": latency(samples, digits=2), "loadavg": load()}


@contextlib.contextmanager
def dask_cluster(work: Path) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    import socket

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = str(REPO / ".venv" / "bin" / "dask")
    out = open(work / "dask.log", "ab")  # noqa: SIM115 - shared by the processes below
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port",
                                   str(port), "--no-dashboard"], stdout=out, stderr=out)]
    try:
        for i in range(2):
            processes.append(subprocess.Popen(
                [dask, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--name", f"w{i}"], cwd=REPO, stdout=out, stderr=out))
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        out.close()


def runs(root: Path, count: int) -> float:
    for i in range(count):
        (root / "circuits" / f"r{i}.qasm").write_text(STATE20.replace(
            "ry(0.1)", f"ry(0.{i + 2})") + "bit[20] c;\nc = measure q;\n")
    command(root / "qubits" / "ctl", "alloc 20 task=runs topology=linear")
    ctl = root / "qubits" / "tasks" / "runs" / "ctl"
    for _ in range(2):  # each of two workers' imports and caches, untimed
        command(ctl, "run r0 shots=1000 noise=off seed=1")
    started = time.perf_counter()
    for i in range(count):
        command(ctl, f"run r{i} shots=1000 noise=off seed={i}")
    return time.perf_counter() - started


def bench_dask(work: Path, count: int) -> Json:
    report: Json = {"runs": count, "qubits": 20}
    with host(work, "runs-local", None) as root:
        report["local_seconds"] = round(runs(root, count), 3)
    with dask_cluster(work) as address:
        config = work / "dask.yaml"
        config.write_text(json.dumps({"live_qubit_mgr": {"executor": f"dask://{address}"}}))
        with host(work, "runs-dask", config) as root:
            report["dask_seconds"] = round(runs(root, count), 3)
    report["dask_over_local"] = ratio(report["dask_seconds"], report["local_seconds"])
    report["loadavg"] = load()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 circuits, 20 rounds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    count, rounds = (200, 20) if args.quick else (2000, 100)
    report: Json = {"benchmark": "bench_scaleout", "quick": args.quick,
                    "machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="qfs-bench-scaleout-") as tmp:
        work = Path(tmp)
        say("starting PostgreSQL and SeaweedFS (scripts/cluster.sh up)")
        with cluster(work) as servers:
            run_section(report, "backends", lambda: bench_backends(work, servers, count))
            run_section(report, "two_hosts", lambda: bench_two_hosts(work, servers, rounds))
        run_section(report, "dask_vs_local", lambda: bench_dask(work, 16))
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
