"""Benchmark /states (Level 2) against baselines measured in the same run; prints one JSON.

Absolute times depend on the machine (and on whatever else runs on it), so every qfs figure
comes with a baseline measured moments before or after on the same CPUs and disk, reported
as medians and ratios (repetitions alternate which side goes first):

  vectors       checkpoint and restore of 20- and 24-qubit random state vectors through a
                real mount: `cp psi.npy /states/x/statevector.npy` (import), and through a
                task (`alloc N`, `restore x`, then timed `checkpoint y format=statevector`,
                `restore y`, and np.load of /states/y/statevector.npy); baselines in this
                process: StateStore.prepare (+ commit, + load) on a temporary Fabric, the
                same task_command without FUSE, a hand-written numpy -> zstd -> AES-GCM
                floor (no fidelity, no entropy), and a plain `cp` / np.load of the raw .npy
                on the same disk; MB/s are of the raw state (16 bytes x 2^n); the direct
                calls are profiled to show where the time goes
  formats       compression ratio, fidelity and time of all seven formats for GHZ, random,
                product and low-entanglement states (shadow on fewer qubits), the automatic
                choice and its reason, and complex64 amplitudes against complex128
  mps_50        a 50-qubit low-entanglement state as an MPS from qiskit-aer, packed, zstd'ed
                and sealed as qfs packs MPS tensors, against the 2^50 x 16 bytes of a state
                vector (outside the mount: no live state or import holds 2^50 amplitudes)
  incremental   full vs `parent=` checkpoints after a ccx on the three highest qubits and
                after rz(0.001) on one qubit

Run it from the repository root with the project's virtualenv, as root with /dev/fuse:

    .venv/bin/python scripts/bench_states.py [--quick] [--out FILE] [--blas-threads N]
                                             [--malloc daemon|default]

--blas-threads sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for this process and the daemon
(qfs computes a dense SVD per checkpoint, and OpenBLAS threads on a loaded 2-core machine can
make one 30x slower). Progress goes to stderr, the JSON to stdout. Temporary trees live under
/tmp and are removed at the end; the mount is lazily unmounted in a finally block. This is
not a test (pytest must not collect it): it measures rather than checks.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import io
import json
import math
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchlib import (
    Json,
    finish,
    fs_type,
    load,
    mounted,
    qfs_command,
    ratio,
    run_section,
    say,
    timed,
    traceback_in,
)
from benchlib import command as send_command

REPO = Path(__file__).resolve().parent.parent
DEVICE = "eagle"
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
# The import path would otherwise pick a format automatically (a full MPS SVD chain at 20
# qubits); the comparison is of the state-vector pipeline, so the mount defaults to it.
MOUNT_CONFIG = "state_store:\n  default_serialization_format: statevector\n"
ZSTD_LEVEL = 3  # compression_level "balanced", the default
ZSTD_THREADS = 2  # compression_threads, the default
MB = 1e6
SERIALIZATION_GOAL_S = 1.0
SECTIONS = ("formats", "mps_50", "incremental", "streaming", "vectors")
COMPRESSION_GOAL = 0.5





@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each part does; --quick shrinks it to a smoke check."""

    vectors: tuple[tuple[int, int], ...] = ((20, 5), (24, 2))  # (qubits, repetitions)
    import_every_rep_up_to: int = 20  # bigger states are imported once (a prepare is slow)
    inproc_checkpoint_up_to: int = 20  # in-process task checkpoint baseline up to this size
    format_qubits: int = 10
    shadow_qubits: tuple[int, ...] = (6, 8)
    mps_qubits: int = 50
    mps_check_qubits: int = 12
    incremental_qubits: tuple[int, ...] = (16, 18)


QUICK = Sizes(vectors=((16, 2), (20, 2)), import_every_rep_up_to=16, format_qubits=8,
              shadow_qubits=(6,), mps_check_qubits=10, incremental_qubits=(14,))


# -- statistics ------------------------------------------------------------------------------


def seconds_summary(samples: list[float], raw_bytes: int | None = None) -> Json:
    """Median and range of a few timings in seconds (all samples kept: there are few),
    with the throughput of the raw state at the median when raw_bytes is given."""
    if not samples:
        return {"n": 0}
    middle = statistics.median(samples)
    report: Json = {"n": len(samples), "median_s": round(middle, 4),
                    "min_s": round(min(samples), 4), "max_s": round(max(samples), 4),
                    "samples_s": [round(s, 4) for s in samples]}
    if raw_bytes is not None:
        report["median_MB_per_s"] = round(raw_bytes / MB / middle, 1) if middle else None
    return report




def median_of(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None




def own_peak_rss_mib() -> float:
    """Peak resident memory of this process (the baselines hold states too)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def process_memory_mib(pid: int) -> Json:
    """VmHWM / VmRSS of the daemon from /proc: its peak is where a 24-qubit state costs."""
    found: Json = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[f"{key}_MiB"] = round(int(value.split()[0]) / 1024, 1)
    return found


def state_overlap(a: Any, b: Any) -> float:
    """|<a|b>|^2 of two state vectors, computed here so it does not rely on qfs."""
    import numpy as np

    return float(abs(np.vdot(a, b)) ** 2)


# -- profiling the direct calls --------------------------------------------------------------


class Profiled:
    """cProfile over the timed calls themselves: no extra run of a 24-qubit prepare is
    needed to say where its time goes (a few thousand Python calls: negligible overhead)."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.calls = 0

    def __call__(self, action: Callable[[], Any]) -> tuple[float, Any]:
        self.calls += 1
        started = time.perf_counter()
        self.profile.enable()
        try:
            result = action()
        finally:
            self.profile.disable()
        return time.perf_counter() - started, result

    def report(self, cumulative: int = 14, own: int = 8) -> Json:
        if not self.calls:
            return {"calls": 0}
        stats = pstats.Stats(self.profile, stream=io.StringIO())
        table = stats.stats  # type: ignore[attr-defined]

        def rows(key: int, count: int) -> list[Json]:
            ours = [kv for kv in table.items() if not kv[0][0].endswith("bench_states.py")]
            ordered = sorted(ours, key=lambda kv: -kv[1][key])
            return [{"function": where(func),
                     "s_per_call": round(entry[key] / self.calls, 4),
                     "share": round(entry[key] / stats.total_tt, 3) if stats.total_tt else None}
                    for func, entry in ordered[:count]]

        return {"calls_profiled": self.calls,
                "total_s_per_call": round(stats.total_tt / self.calls, 4),
                "top_cumulative": rows(3, cumulative), "top_self": rows(2, own)}


def where(func: tuple[str, int, str]) -> str:
    """file:line(name) with site-packages and the repository cut off."""
    path, line, name = func
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{line}({name})"


# -- the mount -------------------------------------------------------------------------------


@contextlib.contextmanager
def qfs_at(base: Path, config: Path) -> Iterator[tuple[Path, subprocess.Popen, Path]]:
    """qfs on base/mnt with `config`, its output in base/daemon.log, for the block."""
    mnt, log = base / "mnt", base / "daemon.log"
    with mounted(qfs_command(mnt, base / "data", "--config", str(config)), mnt, log) as proc:
        yield mnt, proc, log


def command(ctl: Path, line: str) -> float:
    """benchlib's `echo line > ctl` in seconds (the write returns when the daemon has
    finished the command), with the daemon's reply in the error when it refuses."""
    try:
        return send_command(ctl, line)
    except OSError as exc:
        raise RuntimeError(f"{line!r} refused: {exc}; reply: {ctl.read_text().strip()}") from exc


def run_cp(source: Path, target: Path) -> float:
    """A plain `cp` (a process, as a user runs it); seconds until it exits."""
    started = time.perf_counter()
    done = subprocess.run(["cp", str(source), str(target)], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"cp {source} {target}: {done.stderr.strip()}")
    return elapsed


def remove_checkpoint(mnt: Path, name: str) -> bool:
    """rm -r /states/<name> through the mount, so blobs do not pile up on the disk."""
    done = subprocess.run(["rm", "-r", str(mnt / "states" / name)], capture_output=True)
    return done.returncode == 0


# -- states ----------------------------------------------------------------------------------


def random_state(n: int, seed: int) -> Any:
    """A Haar-like random state: dense and entangled, so it is stored as a state vector."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(2**n) + 1j * rng.standard_normal(2**n)
    return vector / np.linalg.norm(vector)


def ghz_state(n: int) -> Any:
    import numpy as np

    vector = np.zeros(2**n, dtype=np.complex128)
    vector[0] = vector[-1] = 1 / math.sqrt(2)
    return vector


def product_state(n: int, seed: int) -> Any:
    """A product of random single-qubit states (qubit k is bit k, as in Qiskit)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vector = np.ones(1, dtype=np.complex128)
    for _ in range(n):
        theta, phi = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        qubit = np.array([math.cos(theta / 2), np.exp(1j * phi) * math.sin(theta / 2)])
        vector = np.kron(qubit, vector)
    return vector


def low_entanglement_circuit(n: int, seed: int, cx_pairs: list[int]) -> Any:
    """Random rotations, CX on the given nearest-neighbour pairs (q, q+1), rotations again:
    each CX can at most double the bond dimension across its cut."""
    import numpy as np
    from qiskit import QuantumCircuit

    rng = np.random.default_rng(seed)
    circuit = QuantumCircuit(n)
    for q in range(n):
        circuit.ry(float(rng.uniform(0, math.pi)), q)
        circuit.rz(float(rng.uniform(0, 2 * math.pi)), q)
    for q in cx_pairs:
        circuit.cx(q, q + 1)
    for q in range(n):
        circuit.ry(float(rng.uniform(0, math.pi)), q)
    return circuit


def low_entanglement_state(n: int, seed: int) -> Any:
    import numpy as np
    from qiskit.quantum_info import Statevector

    circuit = low_entanglement_circuit(n, seed, list(range(n - 1)))
    return np.asarray(Statevector(circuit).data)


# -- 1. state vectors through the mount ------------------------------------------------------


@dataclasses.dataclass
class Floor:
    """The minimal pipeline qfs's state-vector path reduces to, written here by hand:
    byte-shuffle (as qfs's encoder does), zstd level 3 with 2 threads, AES-256-GCM with a
    fresh nonce; no npz container, no decode check, no fidelity, no entropy, no hashes."""

    key: bytes
    directory: Path

    def seal(self, vector: Any, shuffle: bool = True) -> bytes:
        import numpy as np
        import zstandard
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if shuffle:
            raw = vector.view(np.uint8).reshape(-1, vector.dtype.itemsize // 2)
            payload = np.ascontiguousarray(raw.T).data
        else:
            buffer = io.BytesIO()
            np.save(buffer, vector)
            payload = buffer.getbuffer()
        body = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS).compress(payload)
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, body, b"floor")

    def store(self, blob: bytes, name: str) -> Path:
        """Write and fsync, as qfs's blob store does (it renames a temporary file too)."""
        path = self.directory / name
        with open(path, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        return path

    def unseal(self, path: Path, size: int) -> Any:
        import numpy as np
        import zstandard
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        blob = path.read_bytes()
        body = AESGCM(self.key).decrypt(blob[:12], blob[12:], b"floor")
        raw = zstandard.ZstdDecompressor().decompress(body)
        planes = np.frombuffer(raw, dtype=np.uint8).reshape(8, 2 * size)
        return np.ascontiguousarray(planes.T).reshape(-1).view(np.complex128)


@dataclasses.dataclass
class Samples:
    """Every timing of one state size, by name."""

    values: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def get(self, name: str) -> list[float]:
        return self.values.get(name, [])

    def median(self, name: str) -> float | None:
        return median_of(self.get(name))


def bench_vectors(mnt: Path, fabric: Any, base: Path, sizes: Sizes) -> Json:
    """Each size in turn: import, task checkpoint/restore/read through the mount, and the
    in-process and plain baselines, alternating which side goes first."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    floor = Floor(AESGCM.generate_key(bit_length=256), base / "floor")
    floor.directory.mkdir()
    (base / "plain").mkdir()
    results = []
    for n, reps in sizes.vectors:
        results.append(_bench_size(mnt, fabric, base, floor, n, reps, sizes))
    return {
        "goal": "mount throughput >= 50% of the same pipeline called directly in-process",
        "reference_thresholds": {
            "serialization_seconds": f"alarm over {SERIALIZATION_GOAL_S} s",
            "compression": f"alarm when savings (1 - stored/raw) is under {COMPRESSION_GOAL}, "
                           "as levels/tuning.py reads the reference; qfs's own "
                           "compression_ratio field is stored_bytes / raw_bytes, and "
                           "compression_ratio_under_0_5 tests that field literally"},
        "state": "random complex Gaussian vector, normalised (dense, entangled: the "
                 "worst case for compression and what `auto` stores as a state vector)",
        "mount_config": MOUNT_CONFIG.strip(),
        "mb_per_s": "of the raw state, 16 bytes x 2^n, 1 MB = 1e6 bytes",
        "page_cache": "not dropped: plain reads and the blob store read from the page cache",
        "sizes": results,
    }


def _bench_size(mnt: Path, fabric: Any, base: Path, floor: Floor, n: int, reps: int,
                sizes: Sizes) -> Json:
    import numpy as np
    import trio

    from levels import stateformats
    from levels.ctl import Alloc
    from levels.states import Request, npy_bytes

    raw_bytes = 16 * 2**n
    psi = random_state(n, seed=n)
    source = base / f"psi{n}.npy"
    np.save(source, psi)
    task = f"t{n}"
    say(f"vectors: {n} qubits ({raw_bytes / 2**20:.0f} MiB), {reps} repetitions")
    samples = Samples()
    facts: Json = {"mount_meta": [], "restore_replies": [], "read_fidelity": [],
                   "direct_load_fidelity": [], "floor_roundtrip_exact": [], "removed": []}
    alloc_s = command(mnt / "qubits" / "ctl", f"alloc {n} task={task} topology=linear")
    task_ctl = mnt / "qubits" / "tasks" / task / "ctl"
    fabric.qubits.allocate(DEVICE, Alloc(n, task, "linear"), uid=0)
    prepare_profile, load_profile = Profiled(), Profiled()
    loaded_on_mount = False
    elapsed, chosen = timed(lambda: stateformats.choose_format(psi, fabric.states.options))
    facts["auto_choice"] = {"format": chosen[0], "reason": chosen[1],
                            "choose_format_s": round(elapsed, 4)}

    def mount_side(i: int) -> None:
        nonlocal loaded_on_mount
        imported = f"in{n}-{i}"
        if i == 0 or n <= sizes.import_every_rep_up_to:
            (mnt / "states" / imported).mkdir()
            samples.add("mount_import_cp", run_cp(source, mnt / "states" / imported
                                                   / "statevector.npy"))
            meta = json.loads((mnt / "states" / imported / "meta.json").read_text())
            samples.add("mount_import_serialization_in_daemon", meta["serialization_seconds"])
            facts["import_meta"] = _meta_facts(meta)
            if not loaded_on_mount:
                samples.add("mount_restore_imported", command(task_ctl, f"restore {imported}"))
                loaded_on_mount = True
            facts["removed"].append(remove_checkpoint(mnt, imported))
        name = f"ck{n}-{i}"
        samples.add("mount_task_checkpoint", command(
            task_ctl, f"checkpoint {name} format=statevector"))
        meta = json.loads((mnt / "states" / name / "meta.json").read_text())
        samples.add("mount_checkpoint_serialization_in_daemon", meta["serialization_seconds"])
        facts["mount_meta"].append(_meta_facts(meta))
        samples.add("mount_task_restore", command(task_ctl, f"restore {name}"))
        facts["restore_replies"].append(task_ctl.read_text().strip())
        elapsed, decoded = timed(lambda: np.load(mnt / "states" / name / "statevector.npy"))
        samples.add("mount_read_decoded_npy", elapsed)
        facts["read_fidelity"].append(state_overlap(decoded, psi))
        del decoded
        facts["removed"].append(remove_checkpoint(mnt, name))

    def direct_side(i: int) -> None:
        name = f"d{n}-{i}"
        request = Request(name, task=task, format="statevector")
        elapsed, prepared = prepare_profile(lambda: fabric.states.prepare(request, psi))
        samples.add("direct_prepare", elapsed)
        elapsed, _ = timed(lambda p=prepared: fabric.states.commit(p))
        samples.add("direct_commit", elapsed)
        samples.add("direct_prepare_plus_commit", samples.get("direct_prepare")[-1] + elapsed)
        facts["direct_meta"] = _meta_facts(prepared.meta)
        del prepared
        elapsed, (_meta, decoded) = load_profile(lambda: fabric.states.load(name))
        samples.add("direct_load", elapsed)
        facts["direct_load_fidelity"].append(state_overlap(decoded, psi))
        elapsed, data = timed(lambda d=decoded: npy_bytes(d))
        samples.add("direct_load_plus_npy_bytes", samples.get("direct_load")[-1] + elapsed)
        del decoded, data
        samples.add("inproc_task_restore", timed(lambda: trio.run(
            fabric.coordinator.control_task, task, f"restore {name}", 0))[0])
        if n <= sizes.inproc_checkpoint_up_to:
            other = f"e{n}-{i}"
            samples.add("inproc_task_checkpoint", timed(lambda: trio.run(
                fabric.coordinator.control_task, task, f"checkpoint {other} format=statevector",
                0))[0])
            fabric.states.delete(other)
        fabric.states.delete(name)

    def floor_side(i: int) -> None:
        elapsed, blob = timed(lambda: floor.seal(psi))
        samples.add("floor_seal", elapsed)
        stored, path = timed(lambda b=blob: floor.store(b, f"f{n}-{i}"))
        samples.add("floor_seal_plus_store", elapsed + stored)
        facts["floor_stored_bytes"] = len(blob)
        del blob
        elapsed, back = timed(lambda: floor.unseal(path, psi.size))
        samples.add("floor_unseal", elapsed)
        facts["floor_roundtrip_exact"].append(bool(np.array_equal(back, psi)))
        del back
        path.unlink()
        elapsed, blob = timed(lambda: floor.seal(psi, shuffle=False))
        samples.add("floor_seal_unshuffled_npy", elapsed)
        facts["floor_unshuffled_stored_bytes"] = len(blob)
        del blob

    def plain_side(i: int) -> None:
        target = base / "plain" / f"copy{n}-{i}.npy"
        elapsed = run_cp(source, target)
        samples.add("plain_cp", elapsed)
        synced, _ = timed(lambda: subprocess.run(["sync", str(target)], check=True))
        samples.add("plain_cp_plus_sync", elapsed + synced)
        samples.add("plain_np_load", timed(lambda: np.load(target))[0])
        target.unlink()

    sides = [("mount", mount_side), ("direct", direct_side), ("floor", floor_side),
             ("plain", plain_side)]
    for i in range(reps):
        order = sides if i % 2 == 0 else sides[::-1]
        for label, side in order:
            say(f"vectors: {n} qubits, repetition {i + 1}/{reps}: {label}")
            side(i)
    command(task_ctl, "release")
    fabric.qubits.release(task, 0)
    source.unlink()
    return _size_report(n, raw_bytes, reps, alloc_s, samples, facts, prepare_profile,
                        load_profile)


def _meta_facts(meta: Json) -> Json:
    """What a checkpoint's metadata says about its size and time, and the two thresholds."""
    return {
        "format": meta["format"], "stored_bytes": meta["stored_bytes"],
        "raw_bytes": meta["raw_bytes"], "payload_bytes": meta.get("payload_bytes"),
        "compression_ratio": round(meta["compression_ratio"], 4),
        "serialization_seconds": round(meta["serialization_seconds"], 4),
        "fidelity": meta["fidelity"],
        "serialization_under_1s": meta["serialization_seconds"] < SERIALIZATION_GOAL_S,
        "compression_ratio_under_0_5": meta["compression_ratio"] < COMPRESSION_GOAL,
        **alarms(meta),
    }


def alarms(meta: Json) -> Json:
    """The reference's two alarms, read as levels/tuning.py reads them: serialization over
    1 s, and compression savings (1 - stored/raw, better when higher) under 0.5."""
    savings = 1 - meta["compression_ratio"]
    return {"savings_1_minus_ratio": round(savings, 4),
            "alarm_serialization_over_1s": meta["serialization_seconds"] > SERIALIZATION_GOAL_S,
            "alarm_compression_savings_under_0_5": savings < COMPRESSION_GOAL}


def _size_report(n: int, raw_bytes: int, reps: int, alloc_s: float, samples: Samples,
                 facts: Json, prepare_profile: Profiled, load_profile: Profiled) -> Json:
    """Summaries, ratios of throughput (baseline time / mount time) and the breakdown."""
    def block(names: list[str]) -> Json:
        return {name: seconds_summary(samples.get(name), raw_bytes) for name in names
                if samples.get(name)}

    m = samples.median
    checkpoint_mount = m("mount_task_checkpoint")
    import_mount = m("mount_import_cp")
    direct = m("direct_prepare_plus_commit")
    throughput = {
        "task_checkpoint_over_direct_prepare_plus_commit": ratio(direct, checkpoint_mount),
        "task_checkpoint_over_direct_prepare_only": ratio(m("direct_prepare"),
                                                          checkpoint_mount),
        "task_checkpoint_over_inproc_task_command": ratio(m("inproc_task_checkpoint"),
                                                          checkpoint_mount),
        "task_checkpoint_over_floor_seal_plus_store": ratio(m("floor_seal_plus_store"),
                                                            checkpoint_mount),
        "task_checkpoint_over_plain_cp": ratio(m("plain_cp"), checkpoint_mount),
        "task_checkpoint_over_plain_cp_plus_sync": ratio(m("plain_cp_plus_sync"),
                                                         checkpoint_mount),
        "import_cp_over_direct_prepare_plus_commit": ratio(direct, import_mount),
        "import_cp_over_floor_seal_plus_store": ratio(m("floor_seal_plus_store"),
                                                      import_mount),
        "import_cp_over_plain_cp": ratio(m("plain_cp"), import_mount),
        "direct_prepare_plus_commit_over_floor_seal_plus_store": ratio(
            m("floor_seal_plus_store"), direct),
    }
    restore = {
        "task_restore_over_direct_statestore_load": ratio(m("direct_load"),
                                                          m("mount_task_restore")),
        "task_restore_over_inproc_task_command": ratio(m("inproc_task_restore"),
                                                       m("mount_task_restore")),
        "task_restore_over_floor_unseal": ratio(m("floor_unseal"), m("mount_task_restore")),
        "task_restore_over_plain_np_load": ratio(m("plain_np_load"), m("mount_task_restore")),
        "read_npy_over_direct_load_plus_npy_bytes": ratio(m("direct_load_plus_npy_bytes"),
                                                          m("mount_read_decoded_npy")),
        "read_npy_over_plain_np_load": ratio(m("plain_np_load"), m("mount_read_decoded_npy")),
    }
    serial = m("mount_checkpoint_serialization_in_daemon")
    imported_serial = m("mount_import_serialization_in_daemon")
    return {
        "qubits": n, "raw_bytes": raw_bytes, "repetitions": reps,
        "alloc_through_mount_s": round(alloc_s, 4),
        "checkpoint": block([
            "mount_task_checkpoint", "mount_checkpoint_serialization_in_daemon",
            "mount_import_cp", "mount_import_serialization_in_daemon",
            "direct_prepare", "direct_commit", "direct_prepare_plus_commit",
            "inproc_task_checkpoint", "floor_seal", "floor_seal_plus_store",
            "floor_seal_unshuffled_npy", "plain_cp", "plain_cp_plus_sync"]),
        "restore_and_read": block([
            "mount_task_restore", "mount_restore_imported", "mount_read_decoded_npy",
            "direct_load", "direct_load_plus_npy_bytes", "inproc_task_restore",
            "floor_unseal", "plain_np_load"]),
        "throughput_ratio_checkpoint": throughput,
        "throughput_ratio_restore_and_read": restore,
        "meets_goal_task_checkpoint_at_least_half_of_direct": bool(
            throughput["task_checkpoint_over_direct_prepare_plus_commit"] is not None
            and throughput["task_checkpoint_over_direct_prepare_plus_commit"] >= 0.5),
        "meets_goal_import_at_least_half_of_direct": bool(
            throughput["import_cp_over_direct_prepare_plus_commit"] is not None
            and throughput["import_cp_over_direct_prepare_plus_commit"] >= 0.5),
        "meets_goal_task_restore_at_least_half_of_direct_load": bool(
            restore["task_restore_over_direct_statestore_load"] is not None
            and restore["task_restore_over_direct_statestore_load"] >= 0.5),
        "where_the_mount_checkpoint_goes_median_s": {
            "serialization_seconds_in_daemon (encode, decode check, fidelity, entropy SVD, "
            "sha256, zstd, AES-GCM)": _round(serial),
            "rest (vector copy, validate, blob write+fsync, LMDB, FUSE)": _round(
                checkpoint_mount - serial if checkpoint_mount and serial else None),
            "import: cp through FUSE, np.load, validate, blob write, LMDB": _round(
                import_mount - imported_serial if import_mount and imported_serial else None),
        },
        "auto_choice_in_process": {
            **facts["auto_choice"],
            "note": "what an import costs on top with the default format auto (the mount "
                    "here is configured to statevector): choose_format runs a full MPS "
                    "SVD chain for 4 <= n <= 20"},
        "checkpoint_meta_through_mount": facts["mount_meta"],
        "import_meta_through_mount": facts.get("import_meta"),
        "direct_meta": facts.get("direct_meta"),
        "floor_stored_bytes": facts.get("floor_stored_bytes"),
        "floor_unshuffled_npy_stored_bytes": facts.get("floor_unshuffled_stored_bytes"),
        "checks": {
            "restore_replies": facts["restore_replies"],
            "mount_read_overlap_with_original": [round(f, 12) for f in facts["read_fidelity"]],
            "direct_load_overlap_with_original": [round(f, 12)
                                                  for f in facts["direct_load_fidelity"]],
            "floor_roundtrip_exact": facts["floor_roundtrip_exact"],
            "rm_r_through_mount_succeeded": facts["removed"],
        },
        "profile_direct_prepare": prepare_profile.report(),
        "profile_direct_load": load_profile.report(cumulative=10, own=6),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- 2. formats ------------------------------------------------------------------------------


def bench_formats(fabric: Any, fabric64: Any, sizes: Sizes) -> Json:
    """Every format on four kinds of state, in process (prepare is what a checkpoint runs)."""
    from levels import stateformats

    rows: list[Json] = []
    n = sizes.format_qubits
    states = _format_states(n)
    for kind, vector in states.items():
        say(f"formats: {kind} on {n} qubits")
        for fmt in [*[f for f in stateformats.FORMATS if f != "shadow"], None]:
            rows.append(_format_row(fabric, kind, n, vector, fmt))
    for shadow_n in sizes.shadow_qubits:
        say(f"formats: shadow on {shadow_n} qubits")
        for kind, vector in _format_states(shadow_n).items():
            rows.append(_format_row(fabric, kind, shadow_n, vector, "shadow"))
            rows.append(_format_row(fabric, kind, shadow_n, vector, None))
    precision = []
    for kind, vector in states.items():
        wide = _format_row(fabric, kind, n, vector, "statevector")
        narrow = _format_row(fabric64, kind, n, vector, "statevector", prefix="c64")
        precision.append({
            "state": kind, "qubits": n,
            "complex128": {k: wide.get(k) for k in ("stored_bytes", "compression_ratio",
                                                     "fidelity")},
            "complex64": {k: narrow.get(k) for k in ("stored_bytes", "compression_ratio",
                                                    "fidelity", "one_minus_fidelity")},
            "stored_bytes_complex64_over_complex128": ratio(narrow.get("stored_bytes"),
                                                            wide.get("stored_bytes")),
        })
    return {
        "note": "in process via fabric.states.prepare(Request(name, format=fmt), state); "
                "format null is the automatic choice; raw_bytes is the complex128 state "
                "vector (16 x 2^n); compression_ratio = stored_bytes / raw_bytes; fidelity "
                "is what qfs measured against the exact state; prepare_wall_s includes "
                "validation and the automatic choice, serialization_seconds does not",
        "states": {
            "ghz": "(|0..0> + |1..1>)/sqrt2, a Clifford state",
            "random": "normalised complex Gaussian vector",
            "product": "tensor product of random single-qubit states",
            "low_entanglement": "ry/rz on every qubit, a cx(q, q+1) ladder, ry again "
                                "(one cx crosses each cut: bond dimension <= 2)",
        },
        "rows": rows,
        "amplitude_precision": {
            "config": "state_store.amplitude_precision: complex64 (affects the statevector "
                      "format only)",
            "rows": precision,
        },
    }


def _format_states(n: int) -> dict[str, Any]:
    return {"ghz": ghz_state(n), "random": random_state(n, seed=100 + n),
            "product": product_state(n, seed=200 + n),
            "low_entanglement": low_entanglement_state(n, seed=300 + n)}


def _format_row(fabric: Any, kind: str, n: int, vector: Any, fmt: str | None,
                prefix: str = "f") -> Json:
    """One prepare; a refusal (stabilizer of a non-Clifford state, too many qubits) is
    recorded with its message, as a user would see it."""
    from levels.errors import QfsError
    from levels.states import Request

    name = f"{prefix}-{kind}-{n}-{fmt or 'auto'}".replace("_", "-")
    row: Json = {"state": kind, "qubits": n, "asked": fmt or "auto"}
    try:
        elapsed, prepared = timed(lambda: fabric.states.prepare(Request(name, format=fmt),
                                                                vector))
    except QfsError as exc:
        row["refused"] = f"{type(exc).__name__}: {exc}"
        return row
    meta = prepared.meta
    row.update({
        "format": meta["format"], "format_reason": meta["format_reason"],
        "decodes_to": meta["decodes_to"], "fidelity": meta["fidelity"],
        "one_minus_fidelity": float(f"{1 - meta['fidelity']:.3g}"),
        "stored_bytes": meta["stored_bytes"], "payload_bytes": meta["payload_bytes"],
        "raw_bytes": meta["raw_bytes"],
        "compression_ratio": round(meta["compression_ratio"], 5),
        "serialization_seconds": round(meta["serialization_seconds"], 5),
        "prepare_wall_s": round(elapsed, 5),
        "entanglement_entropy_bits": round(meta["entanglement_entropy"], 4),
        "serialization_under_1s": meta["serialization_seconds"] < SERIALIZATION_GOAL_S,
        "compression_ratio_under_0_5": meta["compression_ratio"] < COMPRESSION_GOAL,
        **alarms(meta),
    })
    return row


# -- 3. a 50-qubit MPS -----------------------------------------------------------------------


def aer_mps(n: int, seed: int, with_vector: bool) -> tuple[list[Any], Any, Json]:
    """qiskit-aer's MPS of a low-entanglement circuit, as qfs-ordered tensors.

    Aer gives Vidal form, psi = G0[s0] L0 G1[s1] ... G(n-1)[s(n-1)] (site q = qubit q).
    qfs contracts tensors highest qubit first, each (left bond, 2, right bond), so the chain
    is transposed: qubit q becomes diag(Lq) Gq[s]^T (no L for the highest qubit)."""
    import numpy as np
    from qiskit_aer import AerSimulator

    pairs = [3, 10, 17, 24, 31, 38, 45] if n >= 47 else list(range(1, n - 1, 4))
    circuit = low_entanglement_circuit(n, seed, pairs)
    circuit.save_matrix_product_state(label="mps")
    if with_vector:
        circuit.save_statevector(label="vector")
    elapsed, result = timed(lambda: AerSimulator(method="matrix_product_state").run(
        circuit).result())
    data = result.data(0)
    gammas, lambdas = data["mps"]
    tensors = []
    for q in range(n - 1, -1, -1):
        stacked = np.stack([np.asarray(gammas[q][s]).T for s in (0, 1)], axis=1)
        if q < n - 1:
            stacked = np.asarray(lambdas[q])[:, None, None] * stacked
        tensors.append(np.ascontiguousarray(stacked))
    vector = np.asarray(data["vector"]) if with_vector else None
    info = {"aer_run_s": round(elapsed, 4), "cx_pairs": pairs,
            "gates": dict(circuit.count_ops())}
    return tensors, vector, info


def mps_norm(tensors: list[Any]) -> float:
    """<psi|psi> by transfer matrices: cheap for small bonds, no 2^n vector needed."""
    import numpy as np

    environment = np.ones((1, 1), dtype=np.complex128)
    for tensor in tensors:
        environment = np.einsum("ab,asc,bsd->cd", environment, tensor.conj(), tensor)
    return float(environment.real.sum())


def bench_mps50(fabric: Any, sizes: Sizes) -> Json:
    """Pack, compress and seal Aer's MPS tensors as qfs does; check the conversion on a
    size small enough to hold as a vector."""
    import numpy as np

    from levels import stateformats
    from levels.states import Request
    from levels.store.sealed import Sealer, load_or_create_key

    small = sizes.mps_check_qubits
    say(f"mps: checking the Aer -> qfs tensor conversion on {small} qubits")
    tensors, vector, _ = aer_mps(small, seed=50, with_vector=True)
    decoded = stateformats.decode(_pack_mps(stateformats, tensors))
    check_fidelity = state_overlap(decoded, vector)
    own = fabric.states.prepare(Request("mps-small", format="mps"), vector)
    small_packed = _seal_mps(stateformats, Sealer, tensors, fabric)
    n = sizes.mps_qubits
    say(f"mps: {n} qubits with qiskit-aer's matrix_product_state method")
    tensors, _, info = aer_mps(n, seed=50, with_vector=False)
    elapsed, payload = timed(lambda: _pack_mps(stateformats, tensors))
    key = load_or_create_key(fabric.data_dir / "state.key")
    sealer = Sealer(key, ZSTD_THREADS)
    aad = json.dumps({"name": "mps50", "format": "mps", "qubit_count": n}).encode()
    sealed_s, blob = timed(lambda: sealer.seal(payload, aad, True, None, ZSTD_LEVEL))
    unsealed = stateformats._unpack(sealer.unseal(blob, aad))[1]
    intact = all(np.array_equal(unsealed[f"t{i}"], t) for i, t in enumerate(tensors))
    vector_bytes = 16 * 2**n
    bonds = [t.shape[2] for t in tensors[:-1]]
    return {
        "measured_outside_the_mount": "a 2^50-amplitude state cannot be held: the live "
        "state is limited to 24 qubits (levels.livestate.MAX_LIVE_QUBITS), and import and "
        "StateStore.prepare take a dense vector or matrix; so Aer's MPS tensors are packed "
        "with levels.stateformats._pack (np.savez + JSON header, as _encode_mps does), "
        "compressed and sealed with levels.store.sealed.Sealer (zstd 3, AES-256-GCM), in "
        "this process",
        "qubits": n, "circuit": info,
        "bond_dimensions": {"max": max(bonds), "sum": sum(bonds),
                            "cuts_above_1": sum(b > 1 for b in bonds)},
        "tensor_bytes_complex128": sum(t.nbytes for t in tensors),
        "payload_bytes_npz": len(payload), "stored_bytes_sealed": len(blob),
        "statevector_bytes_2^50x16": vector_bytes,
        "stored_over_statevector": float(f"{len(blob) / vector_bytes:.3g}"),
        "statevector_over_stored": float(f"{vector_bytes / len(blob):.4g}"),
        "pack_s": round(elapsed, 5), "seal_s": round(sealed_s, 5),
        "norm_from_tensors": round(mps_norm(tensors), 12),
        "unsealed_tensors_identical": intact,
        "conversion_check": {
            "qubits": small,
            "overlap_decoded_vs_aer_statevector": round(check_fidelity, 12),
            "sealed_bytes_from_aer_tensors": small_packed,
            "qfs_own_mps_checkpoint_of_the_same_state": {
                k: own.meta[k] for k in ("stored_bytes", "fidelity", "raw_bytes")},
        },
    }


def _pack_mps(stateformats: Any, tensors: list[Any]) -> bytes:
    """Exactly the container _encode_mps writes (a private helper, used so it is the same)."""
    return stateformats._pack({"format": "mps", "sites": len(tensors),
                               "max_bond": max(t.shape[2] for t in tensors)},
                              **{f"t{i}": t for i, t in enumerate(tensors)})


def _seal_mps(stateformats: Any, sealer_class: Any, tensors: list[Any], fabric: Any) -> int:
    from levels.store.sealed import load_or_create_key

    sealer = sealer_class(load_or_create_key(fabric.data_dir / "state.key"), ZSTD_THREADS)
    return len(sealer.seal(_pack_mps(stateformats, tensors), b"check", True, None, ZSTD_LEVEL))


# -- 4. incremental --------------------------------------------------------------------------


def apply_ccx_top(vector: Any) -> Any:
    """ccx with controls q(n-1), q(n-2) and target q(n-3): swaps two eighths of the vector."""
    import numpy as np

    n = round(math.log2(vector.size))
    out = vector.copy().reshape(2, 2, 2, 2 ** (n - 3))  # C order: highest qubit first
    out[1, 1, [0, 1]] = out[1, 1, [1, 0]]
    return np.ascontiguousarray(out.reshape(-1))


def apply_rz(vector: Any, qubit: int, angle: float) -> Any:
    """rz(angle) on one qubit: every amplitude gets a phase e^(-+i angle/2)."""
    import numpy as np

    bits = (np.arange(vector.size) >> qubit) & 1
    return vector * np.where(bits == 1, np.exp(0.5j * angle), np.exp(-0.5j * angle))


def bench_incremental(fabric: Any, sizes: Sizes) -> Json:
    """Full and parent= checkpoints of the same changed state, stored bytes side by side."""
    import numpy as np

    from levels.states import Request

    results = []
    for n in sizes.incremental_qubits:
        say(f"incremental: {n} qubits")
        base = random_state(n, seed=400 + n)
        base_name = f"base{n}"
        prepared = fabric.states.prepare(Request(base_name, format="statevector"), base)
        base_meta = fabric.states.commit(prepared)
        changes = {
            "ccx_top_three_qubits": apply_ccx_top(base),
            "rz_0.001_on_q0": apply_rz(base, 0, 0.001),
            "unchanged (context: the best case)": base.copy(),
        }
        rows = []
        for label, changed in changes.items():
            slug = re.sub(r"[^a-z0-9]+", "-", label.split(" ")[0].lower()).strip("-")
            full = fabric.states.prepare(Request(f"full{n}-{slug}", format="statevector"),
                                         changed)
            delta = fabric.states.prepare(
                Request(f"inc{n}-{slug}", format="statevector", parent=base_name), changed)
            fabric.states.commit(delta)
            _meta, back = fabric.states.load(f"inc{n}-{slug}")
            rows.append({
                "change": label,
                "amplitudes_changed_fraction": round(float(np.mean(changed != base)), 4),
                "full_stored_bytes": full.meta["stored_bytes"],
                "incremental_stored_bytes": delta.meta["stored_bytes"],
                "incremental_over_full": ratio(delta.meta["stored_bytes"],
                                               full.meta["stored_bytes"]),
                "saved_percent": round(100 * (1 - delta.meta["stored_bytes"]
                                              / full.meta["stored_bytes"]), 1),
                "full_serialization_s": round(full.meta["serialization_seconds"], 4),
                "incremental_serialization_s": round(delta.meta["serialization_seconds"], 4),
                "incremental_reloads_to_the_state_overlap": round(
                    state_overlap(back, changed), 12),
            })
            fabric.states.delete(f"inc{n}-{slug}")
        fabric.states.delete(base_name)
        results.append({"qubits": n, "raw_bytes": 16 * 2**n,
                        "base_stored_bytes": base_meta["stored_bytes"], "rows": rows})
    return {
        "note": "in process: prepare(Request(name, format='statevector', parent=base)) "
                "after committing base; the parent's decrypted payload is the zstd "
                "dictionary of the child (raw content, level 3, 2 threads); base is a "
                "random dense state",
        "sizes": results,
    }


# -- main ------------------------------------------------------------------------------------




def environment(base: Path) -> Json:
    import cryptography
    import numpy
    import qiskit
    import qiskit_aer
    import zstandard

    return {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "numpy": numpy.__version__, "qiskit": qiskit.__version__,
        "qiskit_aer": qiskit_aer.__version__, "zstandard": zstandard.__version__,
        "cryptography": cryptography.__version__, "loadavg_at_start": load(),
        "blas_threads_env": {k: os.environ.get(k) for k in BLAS_ENV},
        "tmp_filesystem": fs_type(base),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-2 minute smoke run")
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="OPENBLAS/OMP threads for this process and the daemon")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--malloc", choices=("daemon", "default"), default="daemon",
                        help="this process's allocator: the daemon's settings "
                        "(qfsmount/mallocsettings.py, as a mounted daemon runs), or glibc's "
                        "defaults; in-process figures depend on it, the mounts' do not")
    parser.add_argument("--scale", type=int, default=None, metavar="QUBITS",
                        help="streaming: also import and read back a state this large (28: "
                        "4 GiB; needs ~3x that of free disk)")
    args = parser.parse_args(argv)
    if args.malloc == "daemon":  # runs this process again once, with the tunable set
        from qfsmount.mallocsettings import apply_malloc_settings

        apply_malloc_settings()
    chosen = set(args.sections.split(","))
    if args.blas_threads is not None:  # before numpy is first imported (all imports are lazy)
        os.environ.update(dict.fromkeys(BLAS_ENV, str(args.blas_threads)))
    sizes = QUICK if args.quick else Sizes()
    base = Path(tempfile.mkdtemp(prefix="qfs-bench-states-"))
    report: Json = {"benchmark": "qfs /states (Level 2)", "quick": args.quick,
                    "sizes": dataclasses.asdict(sizes)}
    try:
        from levels.config import load_config
        from levels.fabric import Fabric

        report["environment"] = {**environment(base), "malloc": args.malloc,
                                 "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
        fabric = Fabric(base / "direct-data", load_config())
        config64 = load_config()
        config64.state_store.amplitude_precision = "complex64"
        fabric64 = Fabric(base / "c64-data", config64)
        try:
            if "formats" in chosen:
                run_section(report, "formats", lambda: bench_formats(fabric, fabric64, sizes))
            if "mps_50" in chosen:
                run_section(report, "mps_50", lambda: bench_mps50(fabric, sizes))
            if "incremental" in chosen:
                run_section(report, "incremental", lambda: bench_incremental(fabric, sizes))
            if "streaming" in chosen:
                import bench_states_streaming

                run_section(report, "streaming", lambda: bench_states_streaming.bench_streaming(
                    base, args.quick, args.scale, sys.modules[__name__]))
            if "vectors" in chosen:
                config = base / "qfs.yaml"
                config.write_text(MOUNT_CONFIG)
                say("mounting qfs")
                with qfs_at(base, config) as (mnt, proc, log):
                    run_section(report, "vectors",
                                lambda: bench_vectors(mnt, fabric, base, sizes))
                    report["memory"] = {"daemon": process_memory_mib(proc.pid),
                                        "bench_process_peak_rss_MiB": own_peak_rss_mib()}
                report.update(traceback_in(log))
        finally:
            fabric64.close()
            fabric.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
