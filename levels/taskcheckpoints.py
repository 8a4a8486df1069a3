"""A task's live state to and from the state store: `checkpoint NAME` and `restore NAME`
on a task's ctl (and the coordinator's workflow stages, with the same objects)."""

import math
import time

import trio

from levels import ctl, native
from levels.errors import Invalid, PermissionDenied
from levels.livetasks import LiveTasks
from levels.metrics import Metrics
from levels.stateformats import fidelity, pure_state_of
from levels.states import Request, StateStore, owner_of
from levels.tasks import Task


class TaskCheckpoints:
    def __init__(self, states: StateStore, live: LiveTasks, metrics: Metrics) -> None:
        self._states = states
        self._live = live
        self._metrics = metrics

    async def checkpoint(self, task: Task, command: ctl.Checkpoint) -> str:
        live = self._live.get(task.name)
        vector = live.state.vector.copy()
        provenance = {"task": task.name, "device": task.device,
                      "physical_qubits": list(task.qubits), "produced_by": list(live.history),
                      "measurement_seed": live.seed}
        request = Request(command.name, task=task.name, format=command.format,
                          encrypt=command.encrypt, retention=command.retention,
                          parent=command.parent, owner=task.owner, provenance=provenance)
        prepared = await native.run_sync(self._states.prepare, request, vector)
        self._metrics.serialization_seconds.observe(prepared.meta["serialization_seconds"])
        meta = await trio.to_thread.run_sync(self._states.commit, prepared)  # hash, fsync
        self._metrics.checkpoint_size_bytes.observe(meta["stored_bytes"])
        self._metrics.compression_ratio.set(meta["compression_ratio"])
        return (f"checkpoint {meta['name']}: {meta['format']}, fidelity "
                f"{meta['fidelity']:.12g}, {meta['stored_bytes']} bytes stored")

    async def restore(self, task: Task, name: str, uid: int) -> str:
        """Load a checkpoint (a mixed one as its top eigenvector) and report what is live:
        its fidelity to the checkpoint's decoded state, measured, and to the state that was
        checkpointed, a bound (exact for formats that decode to a vector). Only the
        checkpoint's owner (or root) may restore it: a live state can be read out, and the
        decoded state of a checkpoint is readable by its owner alone."""
        started = time.perf_counter()
        record = self._states.get(name)
        if uid != 0 and owner_of(record) != uid:
            raise PermissionDenied(f"checkpoint {name} belongs to uid {owner_of(record)}")
        held = record["qubit_count"]
        if held != len(task.qubits):
            raise Invalid(f"checkpoint {name} holds {held} qubits; task {task.name} has "
                          f"{len(task.qubits)}")

        def load():
            meta, decoded = self._states.load(name)
            vector = pure_state_of(decoded)
            return meta, vector, fidelity(decoded, vector)

        meta, vector, measured = await native.run_sync(load)
        at_least = fidelity_at_least(meta["fidelity"], measured)
        live = self._live.get(task.name)
        live.load(vector, {"restore": name})
        live.restored = {"checkpoint": name, "format": meta["format"], "fidelity": measured,
                         "checkpoint_fidelity": meta["fidelity"],
                         "fidelity_to_checkpointed_at_least": at_least,
                         "physical_qubits": list(task.qubits)}
        self._metrics.deserialization_seconds.observe(time.perf_counter() - started)
        return (f"restored {name} onto {task.name}: fidelity {measured:.12g} to the "
                f"checkpoint's decoded state, at least {at_least:.12g} to the state checkpointed")


def fidelity_at_least(*links: float) -> float:
    """A lower bound on the fidelity across a chain of states from the fidelities of its
    links: the Bures angle arccos(sqrt(F)) is a metric, so the angles add at most."""
    angle = sum(math.acos(math.sqrt(min(1.0, max(0.0, f)))) for f in links)
    return math.cos(min(angle, math.pi / 2)) ** 2
