"""A `run` of a circuit on the task's qubits, as a job for a worker process.

Transpiling and simulating run native code (Qiskit's Rust passes, Aer's C++) on a program a
user wrote, so they run in a worker (levels/workers.py), where a crash costs this run only.
The job carries everything as plain data: the program's bytes, the task's triggers and
parameters, the couplings among its qubits, and the device's calibration on those qubits
(T1, T2, frequency, each gate's error and duration: a few hundred bytes). Each worker keeps
its own caches of compiled circuits, pass managers (building a preset pass manager costs
~7 ms, more than running a small circuit) and noise models, the last built from the
calibration with Aer's NoiseModel.from_backend on a Target of the task's qubits alone: the
device's own model restricted to them, so Aer simulates n qubits, not the device's 127.

A device cannot apply a two-qubit gate between qubits that are not coupled: the circuit is
routed within the task's own couplings, and a gate between qubits that no chain of the
task's couplings connects is refused with both qubits named, never run without noise.
"""

import dataclasses
from collections.abc import Iterator
from typing import Any

from levels.errors import Invalid
from levels.feedforward import Trigger, compile_dynamic
from levels.lru import LRU
from levels.qasm import ProgramLimits, parse_program

BASIS_GATES = ["cx", "id", "rz", "sx", "x", "measure", "reset", "delay", "if_else"]

_compiled: LRU[Any] = LRU(max_entries=128)
_pass_managers: LRU[Any] = LRU(max_entries=32)
_noise_models: LRU[Any] = LRU(max_entries=32)


@dataclasses.dataclass(frozen=True)
class RunJob:
    """One run, as plain data that crosses to a worker process."""

    source: bytes
    sha256: str
    limits: ProgramLimits
    physical: tuple[int, ...]  # the task's qubits the circuit uses, logical order
    edges: tuple[tuple[int, int], ...]  # couplings among them, numbered 0..len(physical)-1
    triggers: tuple[Trigger, ...]
    parameters: tuple[tuple[str, float], ...]
    shots: int
    seed: int
    calibration: "Calibration | None"  # the task qubits' calibration when noise is on


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A device's calibration on a task's qubits, numbered 0..n-1: what NoiseModel.
    from_backend reads from a Target, as plain numbers (hashable: the worker's cache key)."""

    dt: float | None
    qubits: tuple[tuple[float | None, float | None, float | None], ...]  # t1, t2, frequency
    # (instruction, its qubits, duration, error), for each instruction with such properties
    instructions: tuple[tuple[str, tuple[int, ...], float | None, float | None], ...]


def run(job: RunJob) -> dict[str, int]:
    """Compile the triggers in, route onto the task's couplings, simulate: the counts."""
    from qiskit_aer import AerSimulator

    key = (job.sha256, job.physical, job.edges, job.triggers, job.parameters)
    compiled = _compiled.get(key)
    if compiled is None:
        circuit = parse_program(job.source, job.limits)
        dynamic = compile_dynamic(circuit, list(job.triggers), dict(job.parameters))
        if "measure" not in dynamic.count_ops():
            raise Invalid("the program measures nothing: a run counts measured bits "
                          "(add e.g. `measure q -> c;`)")
        _check_coupled(dynamic, job.physical, job.edges)
        compiled = _pass_manager(len(job.physical), job.edges).run(dynamic)
        _compiled.put(key, compiled)
    noise = _noise_model(job.calibration) if job.calibration else None
    # A fresh simulator per run: a reused one measured twice as slow (14 vs 28 ms).
    result = AerSimulator(noise_model=noise).run(
        compiled, shots=job.shots, seed_simulator=job.seed).result()
    if all(compiled.find_bit(bit).registers for bit in compiled.clbits):
        return {str(k): int(v) for k, v in result.get_counts().items()}
    # A bit outside every register (OpenQASM 3's `bit m;` beside `bit[2] c;`): Qiskit's
    # counts by register would leave it out, misread the others and merge shots, so the
    # counts are keyed by every clbit instead, clbit 0 rightmost, as for loose bits alone.
    width = compiled.num_clbits
    return {format(int(k, 16), f"0{width}b"): int(v)
            for k, v in result.data(0)["counts"].items()}


def _components(width: int, edges: tuple[tuple[int, int], ...]) -> list[int]:
    """The connected component of each local qubit (union-find over the couplings)."""
    parent = list(range(width))

    def root(q: int) -> int:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    for a, b in edges:
        parent[root(a)] = root(b)
    return [root(q) for q in range(width)]


def _check_coupled(circuit, physical: tuple[int, ...], edges: tuple[tuple[int, int], ...]) -> None:
    component = _components(len(physical), edges)
    if len(set(component)) == 1:
        return
    wires = {q: i for i, q in enumerate(circuit.qubits)}
    for operation, qubits in _multi_qubit_operations(circuit, wires):
        if len({component[q] for q in qubits}) > 1:
            a, b = _first_split(qubits, component)
            raise Invalid(
                f"{operation} between q{a} and q{b} cannot run: they are physical qubits "
                f"q{physical[a]} and q{physical[b]}, which no coupling among the task's "
                "qubits connects (allocate a connected set, e.g. `alloc N topology=linear`)")


def _multi_qubit_operations(circuit, wires: dict) -> Iterator[tuple[str, list[int]]]:
    """(name, task qubit indices) of every operation on two or more qubits, inside the
    blocks of control flow too (a block's qubits stand for its instruction's qubits)."""
    for instruction in circuit.data:
        indices = [wires[q] for q in instruction.qubits]
        blocks = getattr(instruction.operation, "blocks", ())
        for block in blocks:
            yield from _multi_qubit_operations(block, dict(zip(block.qubits, indices,
                                                               strict=True)))
        if not blocks and len(indices) > 1 and instruction.operation.name != "barrier":
            yield instruction.operation.name, indices


def _first_split(qubits: list[int], component: list[int]) -> tuple[int, int]:
    first = qubits[0]
    other = next(q for q in qubits[1:] if component[q] != component[first])
    return first, other


def _pass_manager(width: int, edges: tuple[tuple[int, int], ...]):
    manager = _pass_managers.get((width, edges))
    if manager is None:
        from qiskit.transpiler import CouplingMap
        from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

        coupling = CouplingMap([list(e) for e in edges] + [[b, a] for a, b in edges])
        for q in range(width):
            if q not in coupling.physical_qubits:
                coupling.add_physical_qubit(q)
        manager = generate_preset_pass_manager(
            optimization_level=1, coupling_map=coupling, initial_layout=list(range(width)),
            basis_gates=BASIS_GATES, seed_transpiler=0)
        _pass_managers.put((width, edges), manager)
    return manager


def _noise_model(calibration: Calibration):
    """The device's noise model on the task's qubits: from_backend on a Target holding only
    their calibration (from_dict, which cut-down models needed, is deprecated)."""
    model = _noise_models.get(calibration)
    if model is None:
        from qiskit.circuit.library import get_standard_gate_name_mapping
        from qiskit.providers import BackendV2, Options, QubitProperties
        from qiskit.transpiler import InstructionProperties, Target
        from qiskit_aer.noise import NoiseModel

        class Calibrated(BackendV2):
            """A backend that is only its Target, which is all from_backend reads."""

            def __init__(self, target) -> None:
                super().__init__(name="qfs-task-qubits")
                self._target = target

            @property
            def target(self):
                return self._target

            @property
            def max_circuits(self):
                return None

            @classmethod
            def _default_options(cls):
                return Options()

            def run(self, run_input, **options):
                raise NotImplementedError("holds a calibration; runs go to AerSimulator")

        target = Target(num_qubits=len(calibration.qubits), dt=calibration.dt,
                        qubit_properties=[QubitProperties(t1=t1, t2=t2, frequency=frequency)
                                          for t1, t2, frequency in calibration.qubits])
        properties: dict[str, dict] = {}
        for name, qargs, duration, error in calibration.instructions:
            properties.setdefault(name, {})[qargs] = InstructionProperties(duration, error)
        gates = get_standard_gate_name_mapping()
        for name, by_qubits in properties.items():
            target.add_instruction(gates[name], by_qubits)
        model = NoiseModel.from_backend(Calibrated(target))
        _noise_models.put(calibration, model)
    return model
