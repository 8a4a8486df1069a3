"""Level 1 telemetry, as the reference's TelemetryAggregator keeps it: every
`live_qubit_mgr.telemetry_collection_interval` one sample per device of its load and of the
feed-forward and isolation counters; the last `performance.telemetry_buffer_size` samples
are kept in memory and read as JSON lines, oldest first, from /qubits/telemetry (and
/devices/<name>/telemetry).

Samples are taken on the daemon's trio loop, where the qubit manager's state changes, so a
sample is never half-way through an allocation.
"""

import collections
import json
import time
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from levels.metrics import Metrics
    from levels.qubits import LiveQubitManager


class Telemetry:
    def __init__(self, qubits: "LiveQubitManager", metrics: "Metrics", interval_s: float,
                 size: int) -> None:
        self._qubits = qubits
        self._metrics = metrics
        self.interval_s = interval_s
        self._samples: collections.deque[dict[str, dict[str, Any]]] = collections.deque(
            maxlen=size)

    def sample(self) -> dict[str, dict[str, Any]]:
        """Device name -> its sample now."""
        now = round(time.time(), 3)
        dispatches = self._metrics.count(self._metrics.feedforward_latency_seconds)
        violations = int(self._metrics.isolation_violations._value.get())
        samples = {}
        for device in self._qubits.device_names():
            roles = collections.Counter(role for _task, role in
                                        self._qubits.allocator.reservations(device).values())
            samples[device] = {
                "time": now, "device": device, "tasks": len(self._qubits.tasks_on(device)),
                "allocated": roles["allocated"], "buffer": roles["buffer"],
                "cooling": roles["cooling"],
                "free": self._qubits.num_qubits(device) - sum(roles.values()),
                "feedforward_dispatches": dispatches, "isolation_violations": violations}
        return samples

    async def run(self) -> None:
        """Sample until cancelled (the daemon's nursery runs this)."""
        while True:
            self._samples.append(self.sample())
            await trio.sleep(self.interval_s)

    def text(self, device: str) -> str:
        """The kept samples of one device, one JSON object per line."""
        return "".join(json.dumps(s[device], separators=(",", ":")) + "\n"
                       for s in list(self._samples) if device in s)
