"""What the compiled view costs against calling transpile directly; prints one JSON document.

  compiled_view  a 20-qubit, 2,000-gate circuit: the first read of
                 /circuits/<c>/compiled/eagle/v1.qpy (a worker transpiles it for the
                 127-qubit device), a second read (cached), the first read of v1.qasm
                 after it (exported from the QPY), and in this process the same
                 transpile (GenericBackendV2 eagle, same optimization level and seed) with
                 the backend and pass manager built beforehand, interleaved, medians

    .venv/bin/python scripts/bench_compiled.py [--repeats 3] [--out FILE]

Not a test: it measures, it does not check.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import finish, mounted, qfs_command, ratio, run_section, say


def program(seed: int) -> bytes:
    """A 20-qubit circuit of 2,000 one- and two-qubit gates (OpenQASM 3)."""
    import random

    from qiskit import QuantumCircuit, qasm3

    rng = random.Random(seed)
    circuit = QuantumCircuit(20)
    for _ in range(2000):
        a, b = rng.sample(range(20), 2)
        choice = rng.random()
        if choice < 0.4:
            circuit.cx(a, b)
        elif choice < 0.7:
            circuit.rz(rng.uniform(0, 6.28), a)
        else:
            circuit.h(a)
    return qasm3.dumps(circuit).encode()


def bench_compiled_view(repeats: int) -> dict:
    from qiskit import qasm3
    from qiskit.transpiler import generate_preset_pass_manager

    from levels.compiler import DEFAULT_OPTIMIZATION_LEVEL, SEED_TRANSPILER
    from levels.devices import Device, DeviceSpec

    backend = Device(DeviceSpec("eagle", 127, "heavy_hex", 7)).backend
    manager = generate_preset_pass_manager(DEFAULT_OPTIMIZATION_LEVEL, backend=backend,
                                           seed_transpiler=SEED_TRANSPILER)
    first, second, qasm, direct = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root, data = Path(tmp) / "mnt", Path(tmp) / "data"
        with mounted(qfs_command(root, data), root, Path(tmp) / "daemon.log"):
            warm = root / "circuits" / "warm.qasm"
            warm.write_bytes(program(-1))
            (root / "circuits" / "warm" / "compiled" / "eagle" / "v1.qpy").read_bytes()
            for i in range(repeats):
                source = program(i)
                (root / "circuits" / f"c{i}.qasm").write_bytes(source)
                path = root / "circuits" / f"c{i}" / "compiled" / "eagle" / "v1.qpy"
                started = time.perf_counter()
                path.read_bytes()
                first.append(time.perf_counter() - started)
                started = time.perf_counter()
                path.read_bytes()
                second.append(time.perf_counter() - started)
                started = time.perf_counter()
                path.with_suffix(".qasm").read_bytes()
                qasm.append(time.perf_counter() - started)
                circuit = qasm3.loads(source.decode())
                started = time.perf_counter()
                manager.run(circuit)
                direct.append(time.perf_counter() - started)
                say(f"run {i}: view {first[-1]:.2f} s, cached {second[-1] * 1e3:.1f} ms, "
                    f"qasm {qasm[-1]:.2f} s, transpile {direct[-1]:.2f} s")
    view, cached, export, baseline = (statistics.median(s)
                                      for s in (first, second, qasm, direct))
    return {"qubits": 20, "gates": 2000, "device": "eagle (127 qubits, heavy-hex)",
            "optimization_level": DEFAULT_OPTIMIZATION_LEVEL, "repeats": repeats,
            "first_read_s": round(view, 3), "cached_read_ms": round(cached * 1e3, 2),
            "qasm_after_qpy_s": round(export, 3), "transpile_direct_s": round(baseline, 3),
            "first_read_over_transpile": ratio(view, baseline)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    report: dict = {"benchmark": "compiled"}
    run_section(report, "compiled_view", lambda: bench_compiled_view(args.repeats))
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
