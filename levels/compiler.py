"""Compiler integration and readable history: jobs for worker processes.

`compile_version` transpiles one stored version for a device (Qiskit's preset pass manager
on the device's GenericBackendV2 target, seeded, so the same version, device and level give
the same circuit) and returns its QPY and report; `openqasm3` exports that QPY on demand
(Qiskit's OpenQASM 3 exporter takes longer than the transpile itself, ~0.4 s for 2,000
gates on 127 qubits, so a reader of the QPY does not wait for it). `equivalent` decides
whether two versions compute the same unitary (qiskit.quantum_info.Operator.equiv, up to
global phase) within a bound, and `unified_diff` shows how one version's text became the
next. Each takes plain data and returns plain data: they run in a worker
(levels/workers.py) because they run Qiskit's native code on a user's program (and difflib
can take quadratic time on one).
"""

import difflib
import io
import json
import time
from typing import Any

from levels.devices import Device, DeviceSpec
from levels.errors import Unexpressible
from levels.lru import LRU
from levels.qasm import ProgramLimits, parse_program, render_view

COMPILED_FORMATS = ("qasm", "qpy", "report.json")
DEFAULT_OPTIMIZATION_LEVEL = 1
MAX_EQUIVALENCE_QUBITS = 10
# Building an operator costs about operations x 4^qubits (each operation rewrites the whole
# matrix): past this bound a comparison is "unknown" at once, the same on every machine
# (2^27 is 128 operations on 10 qubits, 2,048 on 8; about 3.5 s on the 2-core dev machine).
MAX_EQUIVALENCE_WORK = 2**27
EQUIVALENCE_SECONDS = 10.0  # a backstop on a slow or busy machine, checked per operation
SEED_TRANSPILER = 0

# Per worker: a device's backend costs ~1 s to build, a pass manager ~30 ms.
_backends: LRU[Any] = LRU(max_entries=8)
_pass_managers: LRU[Any] = LRU(max_entries=32)


def _backend(spec: DeviceSpec) -> Any:
    backend = _backends.get(spec)
    if backend is None:
        backend = Device(spec).backend
        _backends.put(spec, backend)
    return backend


def _pass_manager(spec: DeviceSpec, level: int):
    manager = _pass_managers.get((spec, level))
    if manager is None:
        from qiskit.transpiler import generate_preset_pass_manager

        manager = generate_preset_pass_manager(level, backend=_backend(spec),
                                               seed_transpiler=SEED_TRANSPILER)
        _pass_managers.put((spec, level), manager)
    return manager


def _shape(circuit) -> dict[str, int]:
    return {"num_qubits": circuit.num_qubits, "depth": circuit.depth(), "size": circuit.size(),
            "two_qubit_gates": circuit.num_nonlocal_gates()}


def compile_version(source: bytes, title: str, sha256: str, spec: DeviceSpec,
                    level: int) -> dict[str, bytes]:
    """The version transpiled for the device: {"qpy", "report.json"} bytes."""
    import qiskit
    from qiskit import qpy

    circuit = parse_program(source, ProgramLimits(max_bytes=len(source)))
    circuit.name = title  # QPY embeds the name: the same bytes on every mount
    if circuit.num_qubits > spec.qubits:
        raise Unexpressible(f"needs {circuit.num_qubits} qubits; device {spec.name} has "
                            f"{spec.qubits}")
    manager = _pass_manager(spec, level)
    started = time.perf_counter()
    compiled = manager.run(circuit)
    seconds = time.perf_counter() - started
    compiled.name = title
    buffer = io.BytesIO()
    qpy.dump(compiled, buffer)
    layout = compiled.layout
    target = _backend(spec).target
    try:
        duration: float | str = compiled.estimate_duration(target, unit="s")
    except Exception as exc:  # a target without durations for every gate
        duration = f"unknown ({exc})"
    report = {
        "device": spec.name, "device_qubits": spec.qubits, "topology": spec.topology,
        "optimization_level": level, "seed_transpiler": SEED_TRANSPILER,
        "source_sha256": sha256, "qiskit_version": qiskit.__version__,
        "transpile_seconds": round(seconds, 6),
        "target_operations": sorted(target.operation_names),
        "layout": {
            "initial": layout.initial_index_layout(filter_ancillas=True) if layout else None,
            "final": layout.final_index_layout(filter_ancillas=True) if layout else None,
        },
        "before": _shape(circuit), "after": _shape(compiled),
        "duration_estimate_s": duration,
    }
    return {"qpy": buffer.getvalue(), "report.json": json.dumps(report, indent=2).encode() + b"\n"}


def openqasm3(compiled_qpy: bytes) -> bytes:
    """The OpenQASM 3 export of a compiled circuit, from its QPY."""
    from qiskit import qpy

    (circuit,) = qpy.load(io.BytesIO(compiled_qpy))
    return render_view(circuit, "qasm3")


def _unitary_part(circuit) -> tuple[Any, list[tuple[int, int]]]:
    """The circuit without its final measurements, and those measurements as (qubit,
    clbit) pairs; ValueError with the reason when what is left is not a unitary."""
    measured = sorted((circuit.find_bit(i.qubits[0]).index, circuit.find_bit(i.clbits[0]).index)
                      for i in circuit.data if i.operation.name == "measure")
    unitary = circuit.remove_final_measurements(inplace=False)
    for instruction in unitary.data:
        operation = instruction.operation
        if operation.name in ("barrier", "delay"):
            continue
        if getattr(operation, "blocks", ()) or operation.name in ("measure", "reset"):
            raise ValueError(f"{operation.name} before the end of the circuit: not a unitary")
    return unitary, measured


def _operator(circuit, deadline: float):
    """Operator of a unitary circuit, built one operation at a time so that the budget can
    stop it (Operator(circuit) cannot be interrupted)."""
    import numpy as np
    from qiskit.quantum_info import Operator

    width = circuit.num_qubits
    operator = Operator(np.eye(2**width), input_dims=(2,) * width, output_dims=(2,) * width)
    for done, instruction in enumerate(circuit.data):
        if instruction.operation.name in ("barrier", "delay"):
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"comparing unitaries took over {EQUIVALENCE_SECONDS:g} s "
                               f"(stopped after {done} of {len(circuit.data)} operations)")
        qargs = [circuit.find_bit(q).index for q in instruction.qubits]
        operator = operator.compose(Operator(instruction.operation), qargs=qargs)
    return operator


def equivalent(previous: bytes, current: bytes) -> bool | str:
    """True or False when two versions do or do not compute the same unitary up to global
    phase (with the same final measurements), or "unknown (reason)"."""
    a = parse_program(previous, ProgramLimits(max_bytes=len(previous)))
    b = parse_program(current, ProgramLimits(max_bytes=len(current)))
    if (a.num_qubits, a.num_clbits) != (b.num_qubits, b.num_clbits):
        return False
    unbound = sorted({p.name for p in (*a.parameters, *b.parameters)})
    if unbound:
        return f"unknown (unbound parameters: {', '.join(unbound)})"
    if a.num_qubits > MAX_EQUIVALENCE_QUBITS:
        return (f"unknown ({a.num_qubits} qubits: unitaries are compared up to "
                f"{MAX_EQUIVALENCE_QUBITS})")
    try:
        (ua, ma), (ub, mb) = _unitary_part(a), _unitary_part(b)
        if ma != mb:
            return False
        if ua == ub:  # the same operations (a comment or layout of the text changed)
            return True
        operations = len(ua.data) + len(ub.data)
        if operations * 4**a.num_qubits > MAX_EQUIVALENCE_WORK:
            return (f"unknown ({a.num_qubits} qubits and {operations} operations: over the "
                    f"comparison bound of 2^{MAX_EQUIVALENCE_WORK.bit_length() - 1} operations x "
                    "4^qubits)")
        deadline = time.monotonic() + EQUIVALENCE_SECONDS
        return bool(_operator(ua, deadline).equiv(_operator(ub, deadline)))
    except TimeoutError as exc:
        return f"unknown ({exc})"
    except Exception as exc:  # a gate without a matrix, an operation that is not unitary
        return f"unknown ({' '.join(str(exc).split())[:300] or type(exc).__name__})"


def unified_diff(previous: bytes, current: bytes, before: str, after: str) -> bytes:
    """The unified diff of two versions' texts (both UTF-8: the fabric stores no other)."""
    lines = difflib.unified_diff(previous.decode().splitlines(keepends=True),
                                 current.decode().splitlines(keepends=True), before, after)
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines).encode()
