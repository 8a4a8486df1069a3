"""`run CIRCUIT` on a task's ctl: the daemon's half of a run. It builds the job as plain
data (execution.py is the worker's half), waits for the run worker pool, and files the
counts as /circuits/<c>/results/<run>.json, the task's result.json."""

import dataclasses
import json
import secrets
import time
from typing import Any

import trio

from levels import ctl, execution, feedforward
from levels.circuits import CircuitStore
from levels.devices import Device, Devices
from levels.errors import Invalid, NotFound
from levels.livetasks import LiveTasks
from levels.lru import LRU
from levels.metrics import Metrics
from levels.tasks import Task, TaskTable
from levels.timestamps import iso_utc
from levels.workers import WorkerPool


class TaskRuns:
    def __init__(self, circuits: CircuitStore, workers: WorkerPool, devices: Devices,
                 table: TaskTable, live: LiveTasks, metrics: Metrics) -> None:
        self._circuits = circuits
        self._workers = workers
        self._devices = devices
        self._table = table
        self._live = live
        self._metrics = metrics
        # Per device spec and qubit set; bounded, since every recalibration adds a spec.
        self._calibrations: LRU[execution.Calibration] = LRU(max_entries=256)
        self._runs = 0

    def last_run(self, name: str) -> dict[str, Any] | None:
        """The task's last run: in memory, or read back from its circuit's results after a
        remount; None when it has not run (or that result was deleted or its circuit renamed)."""
        live = self._live.peek(name)
        if live is not None and live.last_run is not None:
            return live.last_run
        circuit, _, run = self._table.get(name).last_run.partition("/")
        try:
            return json.loads(self._circuits.result(circuit, run)) if run else None
        except NotFound:
            return None

    async def run(self, task: Task, command: ctl.Run) -> tuple[str, str]:
        """Run a circuit on the task's qubits, its counts stored in the circuit's results/:
        (the reply, the result's file name)."""
        source = self._circuits.get(command.circuit)
        version = command.version or (source.latest.n if source.latest else None)
        if version is None:
            raise Invalid(f"circuit {command.circuit} has no version to run")
        stats = source.version(version).stats
        if stats["num_qubits"] > len(task.qubits):
            raise Invalid(f"{command.circuit} needs {stats['num_qubits']} qubits; task "
                          f"{task.name} has {len(task.qubits)}")
        job = self.job(task, command, self._circuits.source(command.circuit, version), stats)
        started = time.perf_counter()
        counts = await trio.to_thread.run_sync(self._workers.run, execution.run, job)
        duration = time.perf_counter() - started
        self._metrics.gate_operation_seconds.observe(duration)
        self._runs += 1
        run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{task.name}-{self._runs}"
        document = {
            "run": run_id, "circuit": command.circuit, "version": version, "task": task.name,
            "device": task.device, "physical_qubits": list(job.physical),
            "shots": command.shots, "noise": command.noise, "seed": job.seed, "counts": counts,
            "triggers": [t.describe(task.qubits) for t in task.triggers],
            "parameters": task.parameters, "duration_s": round(duration, 6),
            "created": iso_utc(time.time_ns()),
        }
        self._circuits.put_result(command.circuit, f"{run_id}.json",
                                  json.dumps(document, indent=2).encode() + b"\n")
        current = self._table.tasks.get(task.name)
        # Not released while it ran, nor released and its name taken by a new allocation
        # (whose result.json this run's would then be).
        if current is not None and current.created_ns == task.created_ns:
            live = self._live.peek(task.name)
            if live is not None:  # a run never builds a live state (25+ qubits: none)
                live.last_run = document
            self._table.save(dataclasses.replace(
                current, last_run=f"{command.circuit}/{run_id}.json"))
        return f"ran {command.circuit}@v{version}: results/{run_id}.json", f"{run_id}.json"

    def job(self, task: Task, command: ctl.Run, source: bytes,
            stats: dict[str, Any]) -> execution.RunJob:
        """Everything a worker needs for this run, as plain data: the circuit's qubits and
        any idle task qubit a trigger acts on, the triggers on qubits the circuit measures,
        and a seed (one qfs picks comes from the operating system's random source, so
        consecutive runs are independent)."""
        measured = max(stats["num_qubits"], 1)
        used = tuple(task.qubits[:feedforward.width(measured, task.triggers)])
        device = self._devices.get(task.device)
        local = {p: i for i, p in enumerate(used)}
        edges = tuple(sorted((local[a], local[b]) for a, b in device.edges
                             if a in local and b in local))
        triggers = tuple(t for t in task.triggers if t.qubit < stats["num_qubits"])
        seed = command.seed if command.seed is not None else secrets.randbelow(2**63)
        return execution.RunJob(
            source=source, sha256=stats["sha256"], limits=self._circuits.limits, physical=used,
            edges=edges, triggers=triggers, parameters=tuple(sorted(task.parameters.items())),
            shots=command.shots, seed=seed,
            calibration=self._calibration(device, used) if command.noise else None)

    def _calibration(self, device: Device, used: tuple[int, ...]) -> execution.Calibration:
        """The device's calibration on `used` (renumbered 0..n-1), from which the worker
        builds their noise model, so Aer simulates n qubits only; kept per task qubits."""
        key = (device.spec, used)  # a recalibrated device has another spec (seed)
        calibration = self._calibrations.get(key)
        if calibration is None:
            calibration = device.calibration_on(used)
            self._calibrations.put(key, calibration)
        return calibration
