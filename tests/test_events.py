"""Live events: `cat /qubits/tasks/<T>/events` and `/workflows/<W>/events` through a real
mount (every reader gets every event from when it opened; Ctrl-C ends a blocked cat), and
the per-reader bound with its overflow line."""

import json
import queue
import signal
import subprocess
import threading

import pytest
import trio

from levels.events import EventHub
from tests.conftest import GHZ3
from tests.test_coordinator import wait_status, write_workflow
from tests.test_qubits import command, mapping

UNITARY = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\nx q[0];\n"
MEASURED = UNITARY + "creg c[2];\nmeasure q -> c;\n"


class Follower:
    """`cat FILE` in the background, its lines collected as they come."""

    def __init__(self, path) -> None:
        self.proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
        self.lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def take(self, count: int) -> list[dict]:
        return [self.lines.get(timeout=90) for _ in range(count)]

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=10)


@pytest.mark.fuse
def test_every_reader_gets_every_event_as_it_happens(qfs):
    qfs.write_circuit("flip", UNITARY)
    qfs.write_circuit("flipm", MEASURED)
    command(qfs.qubits / "ctl", "alloc 2 task=ev topology=linear")
    ctl = qfs.qubits / "tasks" / "ev" / "ctl"
    physical = mapping(qfs, "ev")
    command(qfs.qubits / f"q{physical[0]}" / "ctl", f"on 1 do x q{physical[1]}")
    events = qfs.qubits / "tasks" / "ev" / "events"
    assert "events" not in [p.name for p in events.parent.iterdir()]  # unlisted
    first, second = Follower(events), Follower(events)
    command(ctl, "apply flip")
    command(ctl, "measure q0")  # |1>: the trigger fires
    late = Follower(events)  # sees only what happens from now on
    command(ctl, "checkpoint evck format=statevector")
    command(ctl, "run flipm shots=16 seed=3")

    seen = first.take(5)
    assert second.take(5) == seen
    kinds = [e["event"] for e in seen]
    assert kinds == ["measurement", "trigger", "checkpoint", "run_started", "run_finished"]
    measured, fired, checkpoint, started, finished = seen
    assert measured["qubit"] == 0 and measured["outcome"] == 1
    assert measured["physical"] == physical[0] and measured["triggers"] == [1]
    assert fired["trigger"] == 1 and fired["action"].startswith(f"1 q{physical[0]} on 1 do x")
    assert checkpoint["path"] == "/states/evck" and (qfs.root / "states" / "evck").exists()
    assert started["circuit"] == "flipm" and started["shots"] == 16
    result = qfs.root / finished["result"].lstrip("/")
    assert json.loads(result.read_text())["counts"]
    assert late.take(3) == seen[2:]
    for follower in (first, second, late):
        assert follower.interrupt() == -signal.SIGINT  # Ctrl-C ends a blocked read
        assert follower.lines.empty()


@pytest.mark.fuse
def test_workflow_events_follow_its_stages(qfs):
    qfs.write_circuit("ghz", GHZ3)
    write_workflow(qfs, "wf", "stages:\n  - {circuit: ghz, name: s0, delay: 1.5}\n"
                   "  - {circuit: ghz, name: s1, shots: 8, checkpoint: true}\n")
    follower = Follower(qfs.root / "workflows" / "wf" / "events")
    wait_status(qfs, "wf", ("done",))
    seen: list[dict] = []
    while not seen or seen[-1]["event"] != "workflow_done":
        seen += follower.take(1)
    seen = [e for e in seen if e["event"] != "workflow_running"]  # it may precede the open
    assert [e["event"] for e in seen] == ["stage_started", "stage_finished", "stage_started",
                                          "stage_finished", "workflow_done"]
    assert seen[3]["stage"] == "s1" and seen[3]["checkpoint"] == "wf-s1"
    assert sum(seen[3]["counts"].values()) == 8
    follower.interrupt()


def test_a_slow_reader_loses_the_oldest_events_and_is_told():
    async def main() -> list[dict]:
        hub = EventHub(capacity=3)
        reader = hub.subscribe("task/t")
        for i in range(5):
            hub.publish("task/t", "measurement", n=i)
        data = await reader.read(0, 1 << 16)
        hub.publish("task/t", "measurement", n=5)
        data += await reader.read(0, 1 << 16)
        return [json.loads(line) for line in data.splitlines()]

    events = trio.run(main)
    assert events[0]["event"] == "overflow" and events[0]["dropped"] == 2
    assert [e["n"] for e in events[1:]] == [2, 3, 4, 5]
