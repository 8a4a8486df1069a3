"""The coordinator: workflows of stages with checkpoints, resume after failure, and
migration of a live state between devices under a fidelity threshold.

A workflow is YAML:

    qubits: 3                 # optional: the most any stage needs
    topology: linear          # optional allocation shape
    stages:
      - name: prepare
        qubits: 2             # optional: this stage's qubit count (the largest is allocated)
        circuit: bell@v1      # applied to the workflow's live state (final measurements
        shots: 1024           #   are dropped; counts are sampled from the state after it)
        checkpoint: true      # /states/<workflow>-<stage> after the stage
        delay: 0.5            # optional seconds to wait first (models queueing)

It runs as in the reference's execute_with_checkpoints: stage by stage on its own task
(`wf-<name>`), recording progress in one transaction per stage. After a failure or a daemon
crash, `resume` restores the last checkpoint onto a fresh allocation and runs the stages
after it again; sampling seeds derive from the workflow and stage names, so the result is
the one an uninterrupted run gives.
"""

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio
import yaml

from levels import ctl
from levels.circuits import validate_name
from levels.errors import Busy, Invalid, NotFound, PermissionDenied, QfsError
from levels.metrics import Metrics
from levels.qubits import LiveQubitManager
from levels.stateformats import encode, pure_state_of
from levels.stateformats import fidelity as state_fidelity
from levels.states import StateStore
from levels.store.meta import MetaStore

log = logging.getLogger("qfs.coordinator")
STAGE_KEYS = {"name": str, "circuit": str, "qubits": int, "shots": int, "checkpoint": bool,
              "delay": float, "format": str}
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    circuit: str
    version: int | None
    shots: int = 0
    checkpoint: bool = False
    delay: float = 0.0
    format: str | None = None
    qubits: int = 0


@dataclasses.dataclass(frozen=True)
class Workflow:
    name: str
    qubits: int
    topology: str
    stages: tuple[Stage, ...]


def parse_workflow(name: str, text: bytes) -> Workflow:
    """Validate a workflow file; every problem is an Invalid naming the key."""
    validate_name(name, "workflow name")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Invalid(f"workflow {name}: not YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("stages"), list) \
            or not document["stages"]:
        raise Invalid(f"workflow {name}: expected a mapping with a non-empty `stages` list")
    unknown = set(document) - {"stages", "qubits", "topology"}
    if unknown:
        raise Invalid(f"workflow {name}: unknown key {sorted(unknown)[0]!r}")
    stages = []
    for index, raw in enumerate(document["stages"]):
        where = f"workflow {name} stage {index + 1}"
        if not isinstance(raw, dict) or "circuit" not in raw:
            raise Invalid(f"{where}: expected a mapping with at least `circuit`")
        for key, value in raw.items():
            kind = STAGE_KEYS.get(key)
            if kind is None:
                raise Invalid(f"{where}: unknown key {key!r} (known: {', '.join(STAGE_KEYS)})")
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise Invalid(f"{where}: {key} must be a {kind.__name__}")
        circuit, _, version = str(raw["circuit"]).partition("@v")
        if version and not version.isdigit():
            raise Invalid(f"{where}: circuit must be NAME or NAME@vN")
        stage_name = str(raw.get("name", f"stage{index + 1}"))
        validate_name(stage_name, f"{where} name")
        shots = int(raw.get("shots", 0))
        if not 0 <= shots <= 1_000_000:
            raise Invalid(f"{where}: shots must be 0..1000000")
        stage_qubits = int(raw.get("qubits", 0))
        if stage_qubits < 0:
            raise Invalid(f"{where}: qubits must be positive")
        stages.append(Stage(stage_name, circuit, int(version) if version else None, shots,
                            bool(raw.get("checkpoint", False)), float(raw.get("delay", 0.0)),
                            raw.get("format"), stage_qubits))
    if len({s.name for s in stages}) != len(stages):
        raise Invalid(f"workflow {name}: stage names must be distinct")
    qubits = document.get("qubits", 0)
    if not isinstance(qubits, int) or qubits < 0:
        raise Invalid(f"workflow {name}: qubits must be a positive integer")
    topology = str(document.get("topology", "any"))
    if topology not in ctl.TOPOLOGIES:
        raise Invalid(f"workflow {name}: topology must be one of {', '.join(ctl.TOPOLOGIES)}")
    return Workflow(name, qubits, topology, tuple(stages))


def stage_seed(workflow: str, stage: str) -> int:
    digest = hashlib.sha256(f"{workflow}/{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Coordinator:
    def __init__(self, meta: MetaStore, qubits: LiveQubitManager, states: StateStore,
                 circuits, metrics: Metrics, migration_threshold: float) -> None:
        self._meta = meta
        self._qubits = qubits
        self._states = states
        self._circuits = circuits
        self._metrics = metrics
        self._threshold = migration_threshold
        self.spawn: Spawn | None = None  # set by the daemon: runs workflows in the background
        self._running: set[str] = set()
        self._cancelled: set[str] = set()
        self._migrations = [0, 0]  # succeeded, attempted
        with meta.writing() as txn:  # a crash stops whatever was running
            for key, raw in list(txn.scan("workflows")):
                record = json.loads(raw)
                if record["status"] == "running":
                    record["status"] = "interrupted"
                    record["reason"] = "the daemon stopped during this workflow; write resume"
                    txn.put("workflows", key, json.dumps(record).encode())

    # -- workflows -----------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._meta.reading() as txn:
            return [k.decode() for k, _ in txn.scan("workflows")]

    def record(self, name: str) -> dict[str, Any]:
        with self._meta.reading() as txn:
            raw = txn.get("workflows", name.encode())
        if raw is None:
            raise NotFound(f"no workflow {name}")
        return json.loads(raw)

    def _save(self, record: dict[str, Any]) -> None:
        with self._meta.writing() as txn:
            txn.put("workflows", record["name"].encode(), json.dumps(record).encode())

    def submit(self, name: str, text: bytes, uid: int) -> None:
        """A workflow file was written: validate it, store it and start it."""
        workflow = parse_workflow(name, text)
        for stage in workflow.stages:
            self._circuits.get(stage.circuit)  # ENOENT now rather than mid-run
        if name in self._running:
            raise Busy(f"workflow {name} is running; cancel it first")
        self._save({"name": name, "definition": text.decode(), "status": "pending",
                    "owner": uid, "completed": [], "results": {}, "reason": "",
                    "updated": time.time()})
        self._start(name)

    def command(self, name: str, line: str, uid: int) -> str:
        record = self.record(name)
        if uid not in (0, record["owner"]):
            raise PermissionDenied(f"workflow {name} belongs to uid {record['owner']}")
        verb = line.strip()
        if verb == "resume":
            if name in self._running:
                raise Busy(f"workflow {name} is already running")
            if record["status"] == "done":
                raise Invalid(f"workflow {name} is done; write the .yaml again to rerun it")
            self._start(name)
            return f"resuming {name}"
        if verb == "cancel":
            if name not in self._running:
                raise Invalid(f"workflow {name} is not running")
            self._cancelled.add(name)
            return f"cancelling {name}"
        raise Invalid("a workflow's ctl takes: resume, cancel")

    def _start(self, name: str) -> None:
        self._running.add(name)
        if self.spawn is None:
            raise Busy("workflows need the mounted daemon to run")
        self.spawn(lambda: self._run(name))

    async def _run(self, name: str) -> None:
        try:
            await self._execute(name)
        except QfsError as exc:
            self._finish(name, "failed", str(exc))
        except Exception as exc:
            log.exception("workflow %s failed", name)
            self._finish(name, "failed", f"internal error: {exc}")
        finally:
            self._running.discard(name)
            self._cancelled.discard(name)

    def _finish(self, name: str, status: str, reason: str = "") -> None:
        record = self.record(name)
        record.update(status=status, reason=reason, updated=time.time())
        self._save(record)

    async def _execute(self, name: str) -> None:
        record = self.record(name)
        workflow = parse_workflow(name, record["definition"].encode())
        task = f"wf-{name}"
        # One allocation for the whole workflow: the most any stage asks for or needs.
        width = max([workflow.qubits] + [max(s.qubits, self._circuits.circuit(
            s.circuit, s.version).num_qubits) for s in workflow.stages])
        if task in self._qubits.tasks:
            self._qubits.release(task, 0)
        self._qubits.allocate(self._qubits.default_device,
                              ctl.Alloc(width, task, workflow.topology), record["owner"])
        # Resume point: the stage after the last checkpointed one that completed.
        completed = record["completed"]
        start = 0
        for index, stage in enumerate(workflow.stages):
            if stage.name in completed and stage.checkpoint:
                start = index + 1
        if start:
            checkpoint = f"{name}-{workflow.stages[start - 1].name}"
            await self._qubits.task_command(task, f"restore {checkpoint}", 0)
        record.update(status="running", reason="", completed=completed[:start],
                      updated=time.time())
        self._save(record)
        for stage in workflow.stages[start:]:
            if name in self._cancelled:
                self._finish(name, "cancelled", f"cancelled before stage {stage.name}")
                return
            if stage.delay:
                await trio.sleep(stage.delay)
            result = await self._stage(name, task, stage)
            record = self.record(name)
            record["completed"].append(stage.name)
            record["results"][stage.name] = result
            record["updated"] = time.time()
            self._save(record)
        self._qubits.release(task, 0)
        self._finish(name, "done")

    async def _stage(self, name: str, task: str, stage: Stage) -> dict[str, Any]:
        version = f"@v{stage.version}" if stage.version else ""
        circuit = self._circuits.circuit(stage.circuit, stage.version)
        unitary = circuit.remove_final_measurements(inplace=False)
        await self._qubits.apply_circuit(task, unitary)
        result: dict[str, Any] = {"circuit": f"{stage.circuit}{version}"}
        if stage.shots:
            vector = self._qubits.live(task).state.vector

            def sample() -> dict[str, int]:
                from qiskit.quantum_info import Statevector

                state = Statevector(vector)
                state.seed(stage_seed(name, stage.name))
                return {k: int(v) for k, v in sorted(state.sample_counts(stage.shots).items())}

            result["counts"] = await trio.to_thread.run_sync(sample)
        if stage.checkpoint:
            checkpoint = f"{name}-{stage.name}"
            if checkpoint in self._states.names():
                self._states.delete(checkpoint)
            fmt = f" format={stage.format}" if stage.format else ""
            reply = await self._qubits.task_command(task, f"checkpoint {checkpoint}{fmt}", 0)
            result["checkpoint"] = checkpoint
            result["checkpoint_fidelity"] = self._states.get(checkpoint)["fidelity"]
            log.info("workflow %s: %s", name, reply)
        return result

    def status_text(self, name: str) -> str:
        record = self.record(name)
        workflow = parse_workflow(name, record["definition"].encode())
        lines = [f"{record['status']}" + (f": {record['reason']}" if record["reason"] else "")]
        for stage in workflow.stages:
            mark = "done" if stage.name in record["completed"] else "pending"
            lines.append(f"{stage.name} {mark}")
        return "\n".join(lines) + "\n"

    def result_json(self, name: str) -> dict[str, Any]:
        record = self.record(name)
        return {"workflow": name, "status": record["status"], "reason": record["reason"],
                "stages": record["results"]}

    # -- migration -----------------------------------------------------------------------

    async def task_command(self, task: str, line: str, uid: int) -> str:
        """A task's ctl: migrate is the coordinator's, the rest Level 1's."""
        command = ctl.parse_task_command(line)
        if isinstance(command, ctl.Migrate):
            return await self.migrate(task, command.device, uid, command.format,
                                      command.threshold)
        return await self._qubits.task_command(task, line, uid)

    async def migrate(self, task_name: str, device: str, uid: int,
                      fmt: str | None = None, threshold: float | None = None) -> str:
        """Move a task's live state to another device, or refuse and leave it untouched."""
        task = self._qubits.task(task_name)
        if device == task.device:
            raise Invalid(f"task {task_name} is already on {device}")
        self._qubits.device(device)  # ENOENT for unknown devices
        limit = self._threshold if threshold is None else threshold
        self._migrations[1] += 1
        started = time.perf_counter()
        vector = self._qubits.live(task_name).state.vector.copy()
        fmt = fmt or "statevector"
        # Sampled formats (shadows) draw from a seed of the state, so the same state gets
        # the same decision every time.
        digest = hashlib.sha256(vector.tobytes()).digest()
        options = dataclasses.replace(self._states.options,
                                      seed=int.from_bytes(digest[:8], "little"))

        def serialize():
            """What the target will hold (a mixed decode's top eigenvector) and its
            fidelity to the live state, the one the threshold is about."""
            loaded = pure_state_of(encode(vector, fmt, options).decoded)
            return loaded, state_fidelity(vector, loaded)

        restored, fidelity = await trio.to_thread.run_sync(serialize)
        self._metrics.migration_fidelity.observe(fidelity)
        if fidelity < limit:
            self._update_success()
            raise Invalid(f"migration of {task_name} to {device} would keep fidelity "
                          f"{fidelity:.6f} < threshold {limit}; the task stays on {task.device}")
        self._qubits.move_task(task_name, device, uid, np.asarray(restored),
                               {"format": fmt, "fidelity": fidelity})
        self._migrations[0] += 1
        self._update_success()
        self._metrics.level_transition_seconds.observe(time.perf_counter() - started)
        moved = self._qubits.task(task_name)
        return (f"migrated {task_name} to {device}: {' '.join(f'q{q}' for q in moved.qubits)}"
                f" (fidelity {fidelity:.12g})")

    def _update_success(self) -> None:
        done, tried = self._migrations
        self._metrics.migration_success_rate.set(done / tried if tried else 1.0)

