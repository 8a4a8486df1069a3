"""Soak test: 8 clients doing a realistic mix of work on one mount for N minutes.

Each client works on its own circuits and tasks: cp imports, editor-style atomic saves,
appends, reads of every view (vN.png included), search listings, qubit alloc/run/release
with triggers, checkpoint/restore, workflows. The mount is remounted now and then, with
clients paused. It fails if the daemon dies, a request hangs more than 30 s, a request
gets EIO or ENOTCONN, an acknowledged write is missing afterwards, or `qfsmount --check`
finds a problem. Prints one JSON document.

    .venv/bin/python scripts/soak.py --minutes 30 [--out bench-results/soak.json]
"""

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchlib import QFSMOUNT, finish, latency, qfs_command, start_daemon, stop_daemon

HANG_SECONDS = 30.0
FATAL = (errno.EIO, errno.ENOTCONN)
CLIENTS = 8


class Soak:
    def __init__(self, base: Path, minutes: float, seed: int) -> None:
        self.mnt = base / "mnt"
        self.data = base / "data"
        self.mnt.mkdir()
        self.deadline = time.monotonic() + minutes * 60
        self.seed = seed
        self.proc: subprocess.Popen | None = None
        self.gate = threading.Condition()  # clients pause while a remount runs
        self.active = 0
        self.remounting = False
        self.acknowledged: dict[str, set[bytes]] = {}  # circuit -> contents closed with success
        self.lock = threading.Lock()
        self.in_flight: dict[int, tuple[str, float]] = {}
        self.failures: list[str] = []
        self.done = Counter()
        self.refused = Counter()
        self.latencies: list[float] = []
        self.remounts = 0

    # -- mount lifecycle -------------------------------------------------------------------

    def mount(self) -> None:
        env = {**os.environ, "QFS_MAX_VERSIONS": "100000"}
        self.proc = start_daemon(qfs_command(self.mnt, self.data), self.mnt,
                                 self.data.parent / "daemon.log", env=env, timeout=60)

    def unmount(self) -> None:
        if self.proc is not None:
            if not stop_daemon(self.mnt, self.proc, timeout=30):
                self.failures.append("the daemon did not exit within 30 s of unmount")
            if self.proc.returncode not in (0, None):
                self.failures.append(f"the daemon exited with status {self.proc.returncode}")
            self.proc = None

    def remount(self) -> None:
        with self.gate:
            self.remounting = True
            while self.active:
                self.gate.wait()
        try:
            self.unmount()
            self.mount()
            self.remounts += 1
            self.verify_acknowledged()
        finally:
            with self.gate:
                self.remounting = False
                self.gate.notify_all()

    # -- one request, watched --------------------------------------------------------------

    def step(self, kind: str, action: Callable[..., object], *args: object) -> None:
        with self.gate:
            while self.remounting:
                self.gate.wait()
            self.active += 1
        me = threading.get_ident()
        started = time.monotonic()
        with self.lock:
            self.in_flight[me] = (kind, started)
        try:
            action(*args)
            with self.lock:
                self.done[kind] += 1
        except OSError as exc:
            with self.lock:
                if exc.errno in FATAL:
                    self.failures.append(f"{kind}: {exc}")
                else:
                    self.refused[f"{kind}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
        finally:
            with self.lock:
                self.in_flight.pop(me, None)
                self.latencies.append(time.monotonic() - started)
            with self.gate:
                self.active -= 1
                self.gate.notify_all()

    def watchdog(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            now = time.monotonic()
            with self.lock:
                for kind, started in self.in_flight.values():
                    if now - started > HANG_SECONDS:
                        self.failures.append(f"{kind} hung for more than {HANG_SECONDS:g} s")
                        stop.set()
            with self.gate:  # a remount stops the daemon on purpose
                proc = None if self.remounting else self.proc
            if proc is not None and proc.poll() is not None:
                self.failures.append(f"the daemon died (status {proc.returncode})")
                stop.set()

    # -- what a client does ----------------------------------------------------------------

    def acknowledge(self, circuit: str, content: bytes) -> None:
        with self.lock:
            self.acknowledged.setdefault(circuit, set()).add(content)

    def client(self, number: int, stop: threading.Event) -> None:
        rng = random.Random(self.seed * 100 + number)
        made: list[str] = []
        counter = 0
        actions = ["import", "save", "append", "views", "search", "qubits", "checkpoint",
                   "workflow"]
        weights = [4, 3, 3, 3, 2, 2, 1, 1]
        while not stop.is_set() and time.monotonic() < self.deadline:
            kind = rng.choices(actions, weights)[0]
            if kind != "import" and not made:
                kind = "import"
            counter += 1
            name = f"c{number}x{counter}"
            circuit = rng.choice(made) if made else name
            if kind == "import":
                self.step(kind, self.do_import, name, rng)
                if (self.mnt / "circuits" / name).exists():
                    made.append(name)
            elif kind == "save":
                self.step(kind, self.do_save, circuit, rng)
            elif kind == "append":
                self.step(kind, self.do_append, circuit, counter)
            elif kind == "views":
                self.step(kind, self.do_views, circuit)
            elif kind == "search":
                self.step(kind, os.listdir, self.mnt / "search" / f"c{number}x")
            else:
                do = {"qubits": self.do_qubits, "checkpoint": self.do_checkpoint,
                      "workflow": self.do_workflow}[kind]
                self.step(kind, do, number, circuit, counter)

    def program(self, rng: random.Random) -> bytes:
        lines = ['OPENQASM 3.0;', 'include "stdgates.inc";', 'qubit[3] q;', 'bit[3] c;']
        for _ in range(rng.randint(2, 12)):
            gate = rng.choice(["h q[0];", "x q[1];", "cx q[0], q[1];", "cx q[1], q[2];",
                               f"rz({rng.random():.6f}) q[2];", "s q[0];"])
            lines.append(gate)
        lines.append("c = measure q;")
        return ("\n".join(lines) + "\n").encode()

    def do_import(self, name: str, rng: random.Random) -> None:
        content = self.program(rng)
        with open(self.mnt / "circuits" / f"{name}.qasm", "wb") as f:
            f.write(content)
        self.acknowledge(name, content)

    def do_save(self, circuit: str, rng: random.Random) -> None:
        """As editors and Python's atomic writers do: a temporary file renamed over."""
        directory = self.mnt / "circuits" / circuit
        content = self.program(rng)
        temporary = directory / f".latest.qasm.{rng.randrange(10**6)}.tmp"
        with open(temporary, "wb") as f:
            f.write(content)
        os.replace(temporary, directory / "latest.qasm")
        self.acknowledge(circuit, content)

    def do_append(self, circuit: str, counter: int) -> None:
        latest = self.mnt / "circuits" / circuit / "latest.qasm"
        before = latest.read_bytes()
        line = f"// note {counter}\n".encode()
        with open(latest, "ab") as f:
            f.write(line)
        self.acknowledge(circuit, before + line)

    def do_views(self, circuit: str) -> None:
        directory = self.mnt / "circuits" / circuit
        for name in ("v1.qasm", "v1.qpy", "v1.qasm3", "v1.txt", "v1.png", "stats.json",
                     "meta.json"):
            path = directory / name
            data = path.read_bytes()
            if os.stat(path).st_size != len(data):
                raise OSError(errno.EIO, f"{path}: st_size differs from what a read returns")

    def ctl(self, path: Path, line: str) -> None:
        with open(path, "w") as f:
            f.write(line + "\n")

    def do_qubits(self, number: int, circuit: str, counter: int) -> None:
        task = f"t{number}x{counter}"
        self.ctl(self.mnt / "qubits" / "ctl", f"alloc 3 task={task} topology=linear")
        try:
            ctl = self.mnt / "qubits" / "tasks" / task / "ctl"
            physical = (self.mnt / "qubits" / "tasks" / task / "mapping").read_text().split()
            self.ctl(self.mnt / "qubits" / physical[1] / "ctl", f"on 1 do x {physical[5]}")
            self.ctl(ctl, f"run {circuit} shots=200 noise=on")
            json.loads((self.mnt / "qubits" / "tasks" / task / "result.json").read_text())
        finally:
            self.ctl(self.mnt / "qubits" / "ctl", f"release task={task}")

    def do_checkpoint(self, number: int, circuit: str, counter: int) -> None:
        """apply takes unitary programs: the circuit without its measurements."""
        task = f"k{number}x{counter}"
        name = f"s{number}x{counter}"
        unitary = f"u{number}x{counter}"
        source = (self.mnt / "circuits" / circuit / "v1.qasm").read_bytes()
        source = source.replace(b"bit[3] c;\n", b"").replace(b"c = measure q;\n", b"")
        (self.mnt / "circuits" / f"{unitary}.qasm").write_bytes(source)
        self.acknowledge(unitary, source)
        self.ctl(self.mnt / "qubits" / "ctl", f"alloc 3 task={task}")
        try:
            ctl = self.mnt / "qubits" / "tasks" / task / "ctl"
            self.ctl(ctl, f"apply {unitary}")
            self.ctl(ctl, f"checkpoint {name}")
            json.loads((self.mnt / "states" / name / "meta.json").read_text())
            self.ctl(ctl, f"restore {name}")
            shutil.rmtree(self.mnt / "states" / name)
        finally:
            self.ctl(self.mnt / "qubits" / "ctl", f"release task={task}")

    def do_workflow(self, number: int, circuit: str, counter: int) -> None:
        name = f"w{number}x{counter}"
        with open(self.mnt / "workflows" / f"{name}.yaml", "w") as f:
            f.write(f"qubits: 3\nstages:\n  - name: one\n    circuit: {circuit}\n"
                    "    shots: 100\n")
        status = self.mnt / "workflows" / name / "status"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if status.read_text().split("\n", 1)[0].split()[-1] in ("done", "failed"):
                return
            time.sleep(0.2)

    # -- the checks at the end -------------------------------------------------------------

    def verify_acknowledged(self) -> None:
        """Every content whose close() succeeded is one of its circuit's versions."""
        with self.lock:
            expected = {k: set(v) for k, v in self.acknowledged.items()}
        for circuit, contents in expected.items():
            directory = self.mnt / "circuits" / circuit
            try:
                stored = {(directory / n).read_bytes() for n in os.listdir(directory)
                          if n.startswith("v") and n.endswith(".qasm")}
            except OSError as exc:
                self.failures.append(f"acknowledged circuit {circuit} unreadable: {exc}")
                continue
            missing = contents - stored
            if missing:
                self.failures.append(f"{circuit}: {len(missing)} acknowledged version(s) lost")

    def check_offline(self) -> None:
        done = subprocess.run([*QFSMOUNT, "--check", "--data", str(self.data)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            self.failures.append(f"qfsmount --check: {done.stdout.strip()} {done.stderr.strip()}")

    def run(self) -> dict:
        self.mount()
        stop = threading.Event()
        watchdog = threading.Thread(target=self.watchdog, args=(stop,), daemon=True)
        watchdog.start()
        clients = [threading.Thread(target=self.client, args=(n, stop), daemon=True)
                   for n in range(CLIENTS)]
        for thread in clients:
            thread.start()
        total = self.deadline - time.monotonic()
        every = max(total / 4, 15.0)
        next_remount = time.monotonic() + every
        while any(t.is_alive() for t in clients) and not stop.is_set():
            time.sleep(0.5)
            if time.monotonic() >= next_remount and time.monotonic() < self.deadline - 5:
                self.remount()
                next_remount = time.monotonic() + every
        stop.set()
        for thread in clients:
            thread.join(timeout=HANG_SECONDS)
        if self.proc is not None and self.proc.poll() is None:
            self.verify_acknowledged()
        self.unmount()
        self.check_offline()
        return {
            "ok": not self.failures, "failures": self.failures[:50],
            "clients": CLIENTS, "requests": dict(self.done), "refused": dict(self.refused),
            "remounts": self.remounts,
            "acknowledged_versions": sum(len(v) for v in self.acknowledged.values()),
            "latency_s": latency(self.latencies, "s", 4),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qfs-soak-"))
    soak = Soak(base, args.minutes, args.seed)
    started = time.monotonic()
    try:
        report = soak.run()
    finally:
        with contextlib.suppress(Exception):
            soak.unmount()
    report["minutes"] = round((time.monotonic() - started) / 60, 2)
    report["date"] = time.strftime("%Y-%m-%d")
    finish(report, args.out)
    if report["ok"]:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"soak failed; data and daemon.log kept in {base}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
