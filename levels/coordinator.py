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
        format: mps           # optional: the checkpoint's format

A file is validated completely before anything starts, within MAX_DEFINITION_BYTES and
MAX_STAGES, and parsed in a thread.
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
from typing import Any, Literal

import numpy as np
import pydantic
import trio
import yaml

from levels import ctl, native
from levels.circuits import MAX_NAME_BYTES, validate_name
from levels.errors import (
    Busy,
    Disabled,
    Invalid,
    NotFound,
    PermissionDenied,
    QfsError,
    TooBig,
)
from levels.livestate import MAX_LIVE_QUBITS
from levels.metrics import Metrics
from levels.qubits import LiveQubitManager
from levels.stateformats import FORMATS, encode, pure_state_of
from levels.stateformats import fidelity as state_fidelity
from levels.states import FORMAT_ALIASES, StateStore
from levels.store.meta import MetaStore

log = logging.getLogger("qfs.coordinator")
Spawn = Callable[[Callable[[], Awaitable[None]]], None]

# Limits on a workflow file, so that no file can hold the daemon: its bytes are parsed (in
# a thread) only up to MAX_DEFINITION_BYTES, and every status and result render is bounded
# by MAX_STAGES lines.
MAX_DEFINITION_BYTES = 256 * 1024
MAX_STAGES = 1000
MAX_SHOTS = 1_000_000
MAX_DELAY_SECONDS = 86_400.0
CHECKPOINT_FORMATS = ("auto", *FORMATS, *FORMAT_ALIASES)


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class _StageModel(_Strict):
    circuit: str = pydantic.Field(max_length=MAX_NAME_BYTES + 12,
                                  pattern=r"^[^@]+(@v[1-9][0-9]{0,8})?$")
    name: str | None = None
    qubits: int = pydantic.Field(0, ge=0, le=MAX_LIVE_QUBITS)
    shots: int = pydantic.Field(0, ge=0, le=MAX_SHOTS)
    checkpoint: bool = False
    delay: float = pydantic.Field(0.0, ge=0.0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)
    format: Literal[CHECKPOINT_FORMATS] | None = None  # type: ignore[valid-type]


class _WorkflowModel(_Strict):
    stages: list[_StageModel] = pydantic.Field(min_length=1)
    qubits: int = pydantic.Field(0, ge=0, le=MAX_LIVE_QUBITS)
    topology: Literal[ctl.TOPOLOGIES] = "any"  # type: ignore[valid-type]


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


def check_definition_size(size: int) -> None:
    """Refuse a workflow file over the limit; called at each write() and at close."""
    if size > MAX_DEFINITION_BYTES:
        raise TooBig(f"a workflow file holds at most {MAX_DEFINITION_BYTES} bytes, "
                     f"not {size}")


def parse_workflow(name: str, text: bytes) -> Workflow:
    """Validate a workflow file completely (every problem is an Invalid naming where), so
    that nothing that starts can fail on its own definition. Slow for large files: run it
    in a thread."""
    validate_name(name, "workflow name")
    check_definition_size(len(text))
    try:
        document = yaml.load(text.decode(), Loader=yaml.CSafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise Invalid(f"workflow {name}: not UTF-8 YAML: {exc}") from exc
    stages = document.get("stages") if isinstance(document, dict) else None
    if isinstance(stages, list) and len(stages) > MAX_STAGES:
        raise Invalid(f"workflow {name}: {len(stages)} stages; at most {MAX_STAGES}")
    try:
        model = _WorkflowModel.model_validate(document)
    except pydantic.ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        raise Invalid(f"workflow {name}{_where(error['loc'])}: {error['msg']}") from None
    parsed = []
    for index, stage in enumerate(model.stages):
        circuit, _, version = stage.circuit.partition("@v")
        stage_name = stage.name if stage.name is not None else f"stage{index + 1}"
        # The checkpoint takes both names: refuse now what could not be stored then.
        if len(f"{name}-{stage_name}".encode()) > MAX_NAME_BYTES:
            raise Invalid(f"workflow {name} stage {index + 1}: its checkpoint name "
                          f"{name}-{stage_name[:40]}... would be over {MAX_NAME_BYTES} bytes")
        validate_name(stage_name, f"workflow {name} stage {index + 1} name")
        parsed.append(Stage(stage_name, circuit, int(version) if version else None,
                            stage.shots, stage.checkpoint, stage.delay, stage.format,
                            stage.qubits))
    if len(f"wf-{name}".encode()) > MAX_NAME_BYTES:
        raise Invalid(f"workflow {name}: its task name wf-{name} would be over "
                      f"{MAX_NAME_BYTES} bytes")
    if len({s.name for s in parsed}) != len(parsed):
        raise Invalid(f"workflow {name}: stage names must be distinct")
    return Workflow(name, model.qubits, model.topology, tuple(parsed))


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the file reads: ' stage 2 delay'; keys of any type
    (YAML allows numbers and lists as keys) are shown short."""
    parts: list[str] = []
    for position, part in enumerate(loc):
        if isinstance(part, int) and position and loc[position - 1] == "stages":
            parts[-1] = f"stage {part + 1}"
        else:
            parts.append(repr(part)[:40] if not isinstance(part, str) else part[:40])
    return "".join(f" {p}" for p in parts)


@dataclasses.dataclass
class _Run:
    """A running workflow: cancel interrupts it wherever it waits; done is set once it
    stopped and holds no qubits."""

    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    stage: str = ""


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A workflow's files as served: made once per change of its record, never per read."""

    definition: bytes
    status: str
    result: str
    updated_ns: int


def _stage_names(record: dict[str, Any]) -> list[str]:
    try:
        return [s.name for s in parse_workflow(record["name"], record["definition"].encode())
                .stages]
    except QfsError:
        return []


def _render(record: dict[str, Any]) -> Rendered:
    completed = set(record["completed"])
    lines = [record["status"] + (f": {record['reason']}" if record["reason"] else "")]
    lines += [f"{s} {'done' if s in completed else 'pending'}" for s in record["stages"]]
    result = {"workflow": record["name"], "status": record["status"],
              "reason": record["reason"], "stages": record["results"]}
    return Rendered(record["definition"].encode(), "\n".join(lines) + "\n",
                    json.dumps(result, indent=2) + "\n", int(record["updated"] * 1e9))


def stage_seed(workflow: str, stage: str) -> int:
    digest = hashlib.sha256(f"{workflow}/{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Coordinator:
    def __init__(self, meta: MetaStore, qubits: LiveQubitManager, states: StateStore,
                 circuits, metrics: Metrics, migration_threshold: float,
                 notice: Callable[[str, str], None], migration_enabled: bool = True) -> None:
        self._meta = meta
        self._qubits = qubits
        self._states = states
        self._circuits = circuits
        self._metrics = metrics
        self._threshold = migration_threshold
        self._migration_enabled = migration_enabled
        self._notice = notice  # a line in /.qfs/log
        self.spawn: Spawn | None = None  # set by the daemon: runs workflows in the background
        self._running: dict[str, _Run] = {}
        self._rendered: dict[str, Rendered] = {}
        self._migrations = [0, 0]  # succeeded, attempted
        with meta.writing() as txn:  # a crash stops whatever was running
            for key, raw in list(txn.scan("workflows")):
                record = json.loads(raw)
                stale = "stages" not in record  # kept before status was rendered from it
                if stale:
                    record["stages"] = _stage_names(record)
                if record["status"] in ("running", "pending"):
                    record["status"] = "interrupted"
                    record["reason"] = "the daemon stopped during this workflow; write resume"
                elif not stale:
                    continue
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

    def rendered(self, name: str) -> Rendered:
        """The workflow's files as served (NotFound if there is no such workflow)."""
        view = self._rendered.get(name)
        if view is None:
            view = self._rendered[name] = _render(self.record(name))
        return view

    def _save(self, record: dict[str, Any]) -> None:
        with self._meta.writing() as txn:
            txn.put("workflows", record["name"].encode(), json.dumps(record).encode())
        self._rendered.pop(record["name"], None)

    async def submit(self, name: str, text: bytes, uid: int) -> None:
        """A workflow file was written: validate it completely (parsing in a thread), store
        it and start it; a refused file starts nothing."""
        check_definition_size(len(text))
        workflow = await trio.to_thread.run_sync(parse_workflow, name, text)
        try:
            self._width(workflow)  # ENOENT, or EINVAL for what no allocation could hold
        except NotFound as exc:  # quiet for a lookup, but here a refused file: say why
            self._notice(f"close /workflows/{name}.yaml", f"refused: {exc}")
            raise
        if name in self._running:
            raise Busy(f"workflow {name} is running; cancel it first")
        self._save({"name": name, "definition": text.decode(), "status": "pending",
                    "owner": uid, "stages": [s.name for s in workflow.stages],
                    "completed": [], "results": {}, "reason": "", "updated": time.time()})
        self._start(name)

    def _width(self, workflow: Workflow) -> int:
        """The qubits the workflow's allocation needs: the most any stage asks for or its
        circuit version has; every circuit and version must exist."""
        width = workflow.qubits
        for circuit, version in {(s.circuit, s.version) for s in workflow.stages}:
            record = self._circuits.get(circuit)
            if version is None and record.latest is None:
                raise Invalid(f"workflow {workflow.name}: circuit {circuit} has no version")
            stats = record.version(version or record.latest.n).stats
            width = max(width, stats["num_qubits"])
        width = max([width] + [s.qubits for s in workflow.stages])
        limit = min(MAX_LIVE_QUBITS, self._qubits.num_qubits(self._qubits.default_device))
        if width > limit:
            raise Invalid(f"workflow {workflow.name} needs {width} qubits; a workflow's live "
                          f"state holds at most {limit}")
        return width

    async def control_workflow(self, name: str, line: str, uid: int) -> str:
        """A line written to the workflow's ctl; returns the reply shown when it is read."""
        command = ctl.parse_workflow_command(line)
        record = self.record(name)
        if uid not in (0, record["owner"]):
            raise PermissionDenied(f"workflow {name} belongs to uid {record['owner']}")
        if isinstance(command, ctl.Resume):
            if name in self._running:
                raise Busy(f"workflow {name} is already running")
            if record["status"] == "done":
                raise Invalid(f"workflow {name} is done; write the .yaml again to rerun it")
            # pending from the reply on: status never shows the last failure as the resume's
            record.update(status="pending", reason="", updated=time.time())
            self._save(record)
            self._start(name)
            return f"resuming {name}"
        run = self._running.get(name)
        if run is None:
            raise Invalid(f"workflow {name} is not running")
        run.scope.cancel()
        await run.done.wait()  # the reply comes once it stopped and released its qubits
        return f"cancelled {name}"

    def _start(self, name: str) -> None:
        if self.spawn is None:
            raise Busy("workflows need the mounted daemon to run")
        run = self._running[name] = _Run()
        self.spawn(lambda: self._run(name, run))

    async def _run(self, name: str, run: _Run) -> None:
        """Run the workflow to its end, whatever the end: done, failed with the reason
        (also in /.qfs/log), or cancelled. A workflow that stopped holds no qubits."""
        try:
            with run.scope:
                await self._execute(name, run)
            if run.scope.cancelled_caught:
                self._release(name)
                where = f" during stage {run.stage}" if run.stage else ""
                self._finish(name, "cancelled", f"cancelled by its ctl{where}")
        except QfsError as exc:
            self._fail(name, str(exc))
        except Exception as exc:
            log.exception("workflow %s failed", name)
            self._fail(name, f"internal error: {exc}")
        finally:
            del self._running[name]
            run.done.set()

    def _fail(self, name: str, reason: str) -> None:
        self._release(name)
        self._finish(name, "failed", reason)
        self._notice(f"workflows/{name}", f"failed: {reason}")

    def _release(self, name: str) -> None:
        if f"wf-{name}" in self._qubits.tasks:
            self._qubits.release(f"wf-{name}", 0)

    def _finish(self, name: str, status: str, reason: str = "") -> None:
        record = self.record(name)
        record.update(status=status, reason=reason, updated=time.time())
        self._save(record)

    async def _execute(self, name: str, run: _Run) -> None:
        record = self.record(name)
        workflow = await trio.to_thread.run_sync(parse_workflow, name,
                                                 record["definition"].encode())
        task = f"wf-{name}"
        self._release(name)
        # One allocation for the whole workflow: the most any stage asks for or needs.
        self._qubits.allocate(self._qubits.default_device,
                              ctl.Alloc(self._width(workflow), task, workflow.topology),
                              record["owner"])
        # Resume point: the stage after the last checkpointed one that completed.
        completed = record["completed"]
        start = 0
        for index, stage in enumerate(workflow.stages):
            if stage.name in completed and stage.checkpoint:
                start = index + 1
        if start:
            checkpoint = f"{name}-{workflow.stages[start - 1].name}"
            await self._qubits.execute(task, ctl.Restore(checkpoint), 0)
        record.update(status="running", reason="", completed=completed[:start],
                      updated=time.time())
        self._save(record)
        for stage in workflow.stages[start:]:
            run.stage = stage.name
            if stage.delay:
                await trio.sleep(stage.delay)
            result = await self._stage(name, task, stage)
            record = self.record(name)
            record["completed"].append(stage.name)
            record["results"][stage.name] = result
            record["updated"] = time.time()
            self._save(record)
        self._release(name)
        self._finish(name, "done")

    async def _stage(self, name: str, task: str, stage: Stage) -> dict[str, Any]:
        version = f"@v{stage.version}" if stage.version else ""
        circuit = self._circuits.circuit(stage.circuit, stage.version)
        unitary = circuit.remove_final_measurements(inplace=False)
        await self._qubits.apply_circuit(task, unitary)
        result: dict[str, Any] = {"circuit": f"{stage.circuit}{version}"}
        if stage.shots:
            vector = self._qubits.live(task).state.vector.copy()  # a measure mutates in place

            def sample() -> dict[str, int]:
                from qiskit.quantum_info import Statevector

                state = Statevector(vector)
                state.seed(stage_seed(name, stage.name))
                return {k: int(v) for k, v in sorted(state.sample_counts(stage.shots).items())}

            result["counts"] = await native.run_sync(sample)
        if stage.checkpoint:
            checkpoint = f"{name}-{stage.name}"
            if checkpoint in self._states.names():
                self._states.delete(checkpoint)
            reply = await self._qubits.execute(
                task, ctl.Checkpoint(checkpoint, format=stage.format), 0)
            result["checkpoint"] = checkpoint
            result["checkpoint_fidelity"] = self._states.get(checkpoint)["fidelity"]
            log.info("workflow %s: %s", name, reply)
        return result

    # -- migration -----------------------------------------------------------------------

    async def control_task(self, task: str, line: str, uid: int) -> str:
        """A line written to a task's ctl: migrate is the coordinator's, the rest Level 1's."""
        command = ctl.parse_task_command(line)
        if isinstance(command, ctl.Migrate):
            return await self.migrate(task, command, uid)
        return await self._qubits.execute(task, command, uid)

    async def migrate(self, task_name: str, command: ctl.Migrate, uid: int) -> str:
        """Move a task's live state to another device, or refuse and leave it untouched.
        Only its owner (or root) may: checked before anything is read or counted."""
        task = self._qubits.task(task_name)
        if uid not in (0, task.owner):
            raise PermissionDenied(f"task {task_name} belongs to uid {task.owner}, not {uid}")
        if not self._migration_enabled:
            raise Disabled("migration is off (cross_level.migration_enabled)")
        device = command.device
        if device == task.device:
            raise Invalid(f"task {task_name} is already on {device}")
        self._qubits.device(device)  # ENOENT for unknown devices
        limit = self._threshold if command.threshold is None else command.threshold
        self._migrations[1] += 1
        started = time.perf_counter()
        vector = self._qubits.live(task_name).state.vector.copy()
        fmt = command.format or "statevector"
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

        restored, fidelity = await native.run_sync(serialize)
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

