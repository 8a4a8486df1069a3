"""Device models: a coupling graph with calibration, from Qiskit's GenericBackendV2.

GenericBackendV2 draws T1, T2, readout and gate errors around published values of real
devices (seeded, so a device is the same on every mount). Every
`live_qubit_mgr.calibration_interval` after the mount a device is calibrated anew, as real
devices are: its model is drawn again with the next seed, so errors drift, noise-aware
allocation follows them, and calibration.json says when. A run's noise is the device's
calibration on the task's qubits alone (`calibration_on`), from which a worker builds the
Aer noise model of those qubits: the 127-qubit model (seconds to build) is never made.
"""

import dataclasses
import functools
import math
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

import rustworkx as rx

from levels.config import Topology
from levels.errors import Invalid, NotFound
from levels.execution import Calibration
from levels.timestamps import iso_utc

TOPOLOGIES = typing.get_args(Topology)


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    name: str
    qubits: int
    topology: str
    seed: int = 7


def heavy_hex_edges(num_qubits: int) -> list[tuple[int, int]]:
    """IBM Eagle-style heavy-hex lattice, numbered row by row as on the real device.

    Rows of 15 qubits (the first without its last column, the seventh without its first)
    joined by four bridge qubits, at columns 0/4/8/12 below even rows and 2/6/10/14 below
    odd ones. 127 qubits give exactly the Eagle lattice; other sizes keep its first
    `num_qubits` qubits.
    """
    edges: list[tuple[int, int]] = []
    above: dict[int, int] = {}  # column -> bridge qubit waiting for the row below
    index, row = 0, 0
    while index < num_qubits:
        columns = range(14) if row == 0 else range(1, 15) if row == 6 else range(15)
        line: dict[int, int] = {}
        for col in columns:
            line[col] = index
            if col - 1 in line:
                edges.append((line[col - 1], index))
            if col in above:
                edges.append((above[col], index))
            index += 1
        above = {}
        for col in (0, 4, 8, 12) if row % 2 == 0 else (2, 6, 10, 14):
            if col in line:
                edges.append((line[col], index))
                above[col] = index
                index += 1
        row += 1
    return [(a, b) for a, b in edges if a < num_qubits and b < num_qubits]


def coupling_edges(spec: DeviceSpec) -> list[tuple[int, int]]:
    n = spec.qubits
    if spec.topology == "heavy_hex":
        return heavy_hex_edges(n)
    if spec.topology == "linear":
        return [(i, i + 1) for i in range(n - 1)]
    if spec.topology == "ring":
        return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)][: n - 1]
    if spec.topology == "grid":
        width = max(1, round(n**0.5))
        edges = []
        for q in range(n):
            if (q + 1) % width and q + 1 < n:
                edges.append((q, q + 1))
            if q + width < n:
                edges.append((q, q + width))
        return edges
    if spec.topology == "all_to_all":
        return [(a, b) for a in range(n) for b in range(a + 1, n)]
    raise Invalid(f"device {spec.name}: unknown topology {spec.topology!r} "
                  f"(known: {', '.join(TOPOLOGIES)})")


@dataclasses.dataclass(frozen=True)
class QubitCalibration:
    t1: float
    t2: float
    readout_error: float
    sx_error: float
    frequency: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Device:
    """A device: graph, calibration, and (lazily) its Qiskit backend and Aer noise model."""

    def __init__(self, spec: DeviceSpec, epoch: int = 0) -> None:
        if spec.qubits < 1:
            raise Invalid(f"device {spec.name}: needs at least one qubit")
        self.spec = spec
        self.epoch = epoch  # calibrations since the mount
        self.calibrated_at = time.time()
        self.name = spec.name
        self.num_qubits = spec.qubits
        self.edges = coupling_edges(spec)
        self.graph = rx.PyGraph(multigraph=False)
        self.graph.add_nodes_from(range(spec.qubits))
        self.graph.add_edges_from_no_data(self.edges)
        self.neighbors: list[tuple[int, ...]] = [
            tuple(sorted(self.graph.neighbors(q))) for q in range(spec.qubits)
        ]
        backend = self.backend
        target = backend.target
        self.calibration = [
            QubitCalibration(
                t1=float(backend.qubit_properties(q).t1 or 0.0),
                t2=float(backend.qubit_properties(q).t2 or 0.0),
                readout_error=float(target["measure"][(q,)].error or 0.0),
                sx_error=float(target["sx"][(q,)].error or 0.0),
                frequency=backend.qubit_properties(q).frequency,
            )
            for q in range(spec.qubits)
        ]
        self.edge_error: dict[tuple[int, int], float] = {}
        for (a, b), props in target["cx"].items():
            error = float(props.error or 0.0) if props is not None else 0.0
            key = (min(a, b), max(a, b))
            self.edge_error[key] = max(self.edge_error.get(key, 0.0), error)

    @functools.cached_property
    def backend(self):
        from qiskit.providers.fake_provider import GenericBackendV2

        directed = [[a, b] for a, b in self.edges] + [[b, a] for a, b in self.edges]
        return GenericBackendV2(
            num_qubits=self.num_qubits,
            basis_gates=["cx", "id", "rz", "sx", "x"],
            coupling_map=directed or None,
            control_flow=True,
            seed=self.spec.seed,
        )

    def calibration_on(self, used: tuple[int, ...]) -> Calibration:
        """The calibration of qubits `used`, renumbered 0..n-1 in that order: the numbers
        NoiseModel.from_backend reads from this device's Target (a few hundred bytes)."""
        target = self.backend.target
        local = {p: i for i, p in enumerate(used)}
        qubits = tuple((props.t1, props.t2, props.frequency)
                       for props in (target.qubit_properties[p] for p in used))
        instructions = tuple(
            (name, tuple(local[q] for q in qargs), props.duration, props.error)
            for name in target.operation_names
            for qargs, props in target[name].items()
            if qargs is not None and props is not None and all(q in local for q in qargs))
        return Calibration(target.dt, qubits, instructions)

    @functools.cached_property
    def girth(self) -> int:
        """Length of the shortest cycle (rings shorter than this cannot exist)."""
        if len(self.edges) > 2000:
            return 3  # dense graphs: not worth computing, triangles are likely
        best = self.num_qubits + 1
        for start in range(self.num_qubits):  # BFS from each qubit (once per device)
            depth, parent, queue = {start: 0}, {start: -1}, [start]
            for q in queue:
                for nb in self.neighbors[q]:
                    if nb not in depth:
                        depth[nb], parent[nb] = depth[q] + 1, q
                        queue.append(nb)
                    elif parent[q] != nb:
                        best = min(best, depth[q] + depth[nb] + 1)
        return best

    @functools.cached_property
    def best_first(self) -> list[int]:
        """Qubits by descending fidelity: allocation tries them in this order."""
        return sorted(range(self.num_qubits), key=self.qubit_fidelity, reverse=True)

    @functools.cached_property
    def log_fidelity(self) -> tuple[list[float], dict[tuple[int, int], float]]:
        """log fidelity per qubit and per coupling (both directions), for fast scoring."""
        qubits = [math.log(max(self.qubit_fidelity(q), 1e-12)) for q in range(self.num_qubits)]
        edges: dict[tuple[int, int], float] = {}
        for a, b in self.edges:
            edges[(a, b)] = edges[(b, a)] = math.log(max(self.edge_fidelity(a, b), 1e-12))
        return qubits, edges

    def qubit_fidelity(self, q: int) -> float:
        cal = self.calibration[q]
        return (1.0 - cal.readout_error) * (1.0 - cal.sx_error)

    def edge_fidelity(self, a: int, b: int) -> float:
        return 1.0 - self.edge_error.get((min(a, b), max(a, b)), 0.0)

    def calibration_json(self, q: int) -> dict[str, Any]:
        return {
            "qubit": q,
            "device": self.name,
            "calibrated_at": iso_utc(int(self.calibrated_at * 1e9)),
            "calibration": self.epoch,
            **self.calibration[q].as_dict(),
            "cx_error": {
                f"q{n}": self.edge_error.get((min(q, n), max(q, n)), 0.0)
                for n in self.neighbors[q]
            },
        }


class Devices:
    """The configured devices, each model built on first use (GenericBackendV2 takes ~0.5 s,
    and a mount that never touches a device never pays it); the first is the default."""

    def __init__(self, specs: list[DeviceSpec], recalibrate_every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = specs
        self.default = specs[0].name
        self._built: dict[str, Device] = {}
        self._lock = threading.Lock()
        self._every = recalibrate_every_s
        self._clock = clock
        self._started = clock()

    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def spec(self, name: str) -> DeviceSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise NotFound(f"no device {name}")

    def get(self, name: str) -> Device:
        """The device as calibrated now: the first request after a calibration interval
        builds the new model (~0.5 s for 127 qubits, once per interval)."""
        epoch = int((self._clock() - self._started) // self._every) if self._every else 0
        with self._lock:
            built = self._built.get(name)
            if built is None or built.epoch != epoch:
                spec = self.spec(name)
                built = Device(dataclasses.replace(spec, seed=spec.seed + epoch), epoch)
                self._built[name] = built
            return built
