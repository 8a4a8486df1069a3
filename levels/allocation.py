"""Topology- and noise-aware choice of physical qubits.

Shapes (linear, ring, triangle, grid, star) are found as subgraph monomorphisms of the
free part of the coupling graph with rustworkx's VF2, trying the best-calibrated qubits
first and scoring the first candidates found; `any` grows a connected set greedily from
each of the best free qubits. The score of a candidate is the geometric mean of the
fidelities it relies on: (1 - readout error)(1 - sx error) of each qubit and
(1 - cx error) of each coupling the shape uses. `noise=` is the lowest acceptable score.

`live_qubit_mgr.allocation_strategy` picks what the choice weighs: `topology_noise_aware`
(the default) the shape and the calibration of its qubits and couplings; `noise_aware` the
qubits' calibration alone (coupling errors are not weighed); `topology_aware` the shape
alone: the first fitting set in qubit-number order, calibration ignored.
"""

import itertools
import math
from collections.abc import Iterable

import rustworkx as rx

from levels.devices import Device
from levels.errors import NoSpace

MAX_CANDIDATES = 24
GREEDY_SEEDS = 8


def shape_graph(topology: str, n: int) -> rx.PyGraph | None:
    """The pattern a shape asks for; None for `any` (connected, no fixed pattern)."""
    if topology == "any":
        return None
    if topology == "linear":
        return rx.generators.path_graph(n)
    if topology == "ring":
        if n < 3:
            raise NoSpace(f"a ring needs at least 3 qubits, not {n}")
        return rx.generators.cycle_graph(n)
    if topology == "triangle":
        if n != 3:
            raise NoSpace(f"a triangle is 3 qubits, not {n}")
        return rx.generators.cycle_graph(3)
    if topology == "star":
        return rx.generators.star_graph(n)
    if topology == "grid":
        rows = next((r for r in range(math.isqrt(n), 0, -1) if n % r == 0), 1)
        if rows == 1 and n > 2:
            raise NoSpace(f"{n} qubits do not form a grid of at least 2 rows")
        return rx.generators.grid_graph(rows, n // rows)
    raise NoSpace(f"unknown topology {topology}")


def score(device: Device, qubits: list[int], edges: Iterable[tuple[int, int]]) -> float:
    qubit_log, edge_log = device.log_fidelity
    total = sum(qubit_log[q] for q in qubits)
    count = len(qubits)
    for edge in edges:
        total += edge_log.get(edge, math.log(1e-12))
        count += 1
    return math.exp(total / count) if count else 0.0


def choose(
    device: Device, free: set[int], n: int, topology: str,
    strategy: str = "topology_noise_aware", free_means: str = "free",
) -> tuple[list[int], float]:
    """The best candidate (logical order -> physical qubit) among `free` and its score, or
    NoSpace; `free_means` says what made those qubits the ones to choose from."""
    if n > len(free):
        raise NoSpace(f"{n} qubits asked, {len(free)} {free_means} on {device.name}")
    pattern = shape_graph(topology, n)
    if topology in ("ring", "triangle") and n < device.girth:
        raise NoSpace(f"no ring of {n} exists on {device.name}: its shortest cycle has "
                      f"{device.girth} qubits")
    best: tuple[float, list[int]] | None = None
    by_number = strategy == "topology_aware"
    order = sorted(free) if by_number else [q for q in device.best_first if q in free]
    for qubits, edges in _candidates(device, free, n, pattern, order):
        value = score(device, qubits, () if strategy == "noise_aware" else edges)
        if best is None or value > best[0]:
            best = (value, qubits)
        if by_number:
            break
    if best is None:
        raise NoSpace(f"no {topology} set of {n} qubits {free_means} on {device.name}")
    return best[1], best[0]


def _candidates(device: Device, free: set[int], n: int, pattern: rx.PyGraph | None,
                order: list[int]):
    if pattern is None:
        yield from _greedy_connected(device, free, n, order)
        return
    # A graph whose node i is order[i], so that VF2 (id_order) tries the best qubits first.
    position = {q: i for i, q in enumerate(order)}
    sub = rx.PyGraph(multigraph=False)
    sub.add_nodes_from(order)
    sub.add_edges_from_no_data([(position[a], position[b]) for a, b in device.edges
                                if a in position and b in position])
    mappings = rx.vf2_mapping(sub, pattern, subgraph=True, induced=False, id_order=True,
                              call_limit=200_000)
    for mapping in itertools.islice(mappings, MAX_CANDIDATES):
        by_logical = {logical: order[node] for node, logical in mapping.items()}
        qubits = [by_logical[i] for i in range(n)]
        edges = [(qubits[a], qubits[b]) for a, b in pattern.edge_list()]
        yield qubits, edges


def _greedy_connected(device: Device, free: set[int], n: int, order: list[int]):
    """Grow from each of the best free qubits (see _grow)."""
    for seed in order[:GREEDY_SEEDS]:
        grown = _grow(device, free, n, seed)
        if grown is not None:
            yield grown


def _grow(device: Device, free: set[int], n: int, seed: int):
    """Add, one at a time, the free neighbour whose qubit and coupling log-fidelities are
    best; the frontier keeps each candidate's best attachment."""
    qubit_log, edge_log = device.log_fidelity
    chosen, members = [seed], {seed}
    edges: list[tuple[int, int]] = []
    frontier: dict[int, tuple[float, int]] = {}  # candidate -> (gain, attached to)
    q = seed
    while True:
        for nb in device.neighbors[q]:
            if nb in free and nb not in members:
                gain = qubit_log[nb] + edge_log[(q, nb)]
                if nb not in frontier or gain > frontier[nb][0]:
                    frontier[nb] = (gain, q)
        if len(chosen) == n:
            return chosen, edges
        if not frontier:
            return None
        q = max(frontier, key=lambda c: frontier[c][0])
        _gain, attached = frontier.pop(q)
        chosen.append(q)
        members.add(q)
        edges.append((attached, q))
