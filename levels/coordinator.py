"""The coordinator: workflows of stages with checkpoints, resume after failure, and
migration of a live state between devices under a fidelity threshold.

A workflow file (workflowdef.py) is validated completely before anything starts, parsed
in a thread; its progress is a WorkflowRecord (workflowrecord.py).
It runs as in the reference's execute_with_checkpoints: stage by stage on its own task
(`wf-<name>`), recording progress in one transaction per stage. After a failure or a daemon
crash, `resume` restores the last checkpoint onto a fresh allocation and runs the stages
after it again; sampling seeds derive from the workflow and stage names, so the result is
the one an uninterrupted run gives.
"""

import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np
import trio

from levels import ctl, native
from levels.errors import (
    Busy,
    Disabled,
    Exists,
    Invalid,
    NotFound,
    PermissionDenied,
    QfsError,
)
from levels.events import workflow_topic
from levels.livestate import MAX_LIVE_QUBITS
from levels.metrics import Metrics
from levels.qubits import LiveQubitManager
from levels.stateformats import encode, pure_state_of
from levels.stateformats import fidelity as state_fidelity
from levels.states import StateStore
from levels.store.meta import MetaStore
from levels.workflowdef import Stage, Workflow, check_definition_size, parse_workflow
from levels.workflowrecord import (
    TABLE,
    Rendered,
    StageResult,
    Status,
    WorkflowRecord,
    render,
)

log = logging.getLogger("qfs.coordinator")
Spawn = Callable[[Callable[[], Awaitable[None]]], None]

@dataclasses.dataclass
class _Run:
    """A running workflow: cancel interrupts it wherever it waits; done is set once it
    stopped and holds no qubits."""

    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    stage: str = ""


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
            for key, raw in list(txn.scan(TABLE)):
                record = WorkflowRecord.from_json(raw)
                if record.status in ("running", "pending"):
                    record.status = "interrupted"
                    record.reason = "the daemon stopped during this workflow; write resume"
                elif b'"stages"' in raw:
                    continue  # else kept before stages were recorded: record them now
                txn.put(TABLE, key, record.to_json())

    # -- workflows -----------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._meta.reading() as txn:
            return [k.decode() for k, _ in txn.scan(TABLE)]

    def record(self, name: str) -> WorkflowRecord:
        with self._meta.reading() as txn:
            raw = txn.get(TABLE, name.encode())
        if raw is None:
            raise NotFound(f"no workflow {name}")
        return WorkflowRecord.from_json(raw)

    def rendered(self, name: str) -> Rendered:
        """The workflow's files as served (NotFound if there is no such workflow)."""
        view = self._rendered.get(name)
        if view is None:
            view = self._rendered[name] = render(self.record(name))
        return view

    def _save(self, record: WorkflowRecord) -> None:
        with self._meta.writing() as txn:
            txn.put(TABLE, record.name.encode(), record.to_json())
        self._rendered.pop(record.name, None)

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
        self._check_here(name)
        if name in self._running:
            raise Busy(f"workflow {name} is running; cancel it first")
        self._save(WorkflowRecord(name, text.decode(), "pending", uid,
                                  [s.name for s in workflow.stages]))
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
        if uid not in (0, record.owner):
            raise PermissionDenied(f"workflow {name} belongs to uid {record.owner}")
        self._check_here(name)
        if isinstance(command, ctl.Resume):
            if name in self._running:
                raise Busy(f"workflow {name} is already running")
            if record.status == "done":
                raise Invalid(f"workflow {name} is done; write the .yaml again to rerun it")
            # pending from the reply on: status never shows the last failure as the resume's
            record.touch("pending")
            self._save(record)
            self._start(name)
            return f"resuming {name}"
        run = self._running.get(name)
        if run is None:
            raise Invalid(f"workflow {name} is not running")
        run.scope.cancel()
        await run.done.wait()  # the reply comes once it stopped and released its qubits
        return f"cancelled {name}"

    def _check_here(self, name: str) -> None:
        """A workflow is run, resumed, cancelled and rewritten where it runs: the host its
        task's live state lives on (another host's resume would fight it for the task)."""
        task = self._qubits.tasks.get(f"wf-{name}")
        if task is not None and task.host != self._qubits.table.host:
            raise Busy(f"workflow {name} runs on host {task.host}, where its task wf-{name} "
                       "lives: resume, cancel or write it there")

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

    def _finish(self, name: str, status: Status, reason: str = "") -> None:
        record = self.record(name)
        record.touch(status, reason)
        self._save(record)
        self._qubits.events.publish(workflow_topic(name), f"workflow_{status}", reason=reason)

    async def _execute(self, name: str, run: _Run) -> None:
        record = self.record(name)
        workflow = await trio.to_thread.run_sync(parse_workflow, name,
                                                 record.definition.encode())
        task = f"wf-{name}"
        self._release(name)
        # One allocation for the whole workflow: the most any stage asks for or needs.
        self._qubits.allocate(self._qubits.default_device,
                              ctl.Alloc(self._width(workflow), task, workflow.topology),
                              record.owner)
        # Resume point: the stage after the last checkpointed one that completed.
        completed = record.completed
        start = 0
        for index, stage in enumerate(workflow.stages):
            if stage.name in completed and stage.checkpoint:
                start = index + 1
        if start:
            checkpoint = f"{name}-{workflow.stages[start - 1].name}"
            await self._qubits.execute(task, ctl.Restore(checkpoint), 0)
        record.completed = completed[:start]
        record.touch("running")
        self._save(record)
        events = self._qubits.events
        events.publish(workflow_topic(name), "workflow_running", task=task,
                       resumed_after=workflow.stages[start - 1].name if start else None)
        for stage in workflow.stages[start:]:
            run.stage = stage.name
            if stage.delay:
                await trio.sleep(stage.delay)
            events.publish(workflow_topic(name), "stage_started", stage=stage.name)
            result = await self._stage(name, task, stage)
            events.publish(workflow_topic(name), "stage_finished", stage=stage.name,
                           **result)
            record = self.record(name)
            record.completed.append(stage.name)
            record.results[stage.name] = result
            record.updated = time.time()
            self._save(record)
        self._release(name)
        self._finish(name, "done")

    async def _stage(self, name: str, task: str, stage: Stage) -> StageResult:
        version = f"@v{stage.version}" if stage.version else ""
        circuit = self._circuits.circuit(stage.circuit, stage.version)
        unitary = circuit.remove_final_measurements(inplace=False)
        await self._qubits.apply_circuit(task, unitary)
        applied = stage.version or self._circuits.get(stage.circuit).latest.n
        self._qubits.live(task).note({"apply": f"{stage.circuit}@v{applied}"})  # provenance
        result = StageResult(circuit=f"{stage.circuit}{version}")
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
            if checkpoint in self._states.names():  # this workflow's, from an earlier run
                made_by = self._states.get(checkpoint).get("provenance", {}).get("task")
                if made_by != task:  # another's (workflow p-q's stage r is p's stage q-r)
                    raise Exists(f"checkpoint {checkpoint} exists, made by "
                                 f"{made_by or 'an import'}, not by this workflow")
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

