"""bench_states' `streaming` section (issue 15): the chunked state path against its floors,
measured in the same run.

  floor       the pipeline a checkpoint reduces to, in this process: numpy byte shuffle,
              zstd level 1 with 2 threads, AES-256-GCM, SHA-256 (no disk, no fidelity,
              no entropy): the issue's definition
  checkpoint  `checkpoint y format=statevector` of a live random state through the mount
              (a ctl write returns when the checkpoint is durable), compression_level fast
  restore     np.load of /states/y/statevector.npy through the mount (first read of that
              checkpoint: its chunks are decoded as the reads come) against np.load of a
              plain .npy file holding the same bytes (page-cached)
  mmap        np.load(mmap_mode="r") and the first 1,024 amplitudes: what a ranged read
              costs where the whole file is 2^n x 16 bytes
  lossy       complex64 amplitudes (amplitude_precision: complex64), in process: ratio,
              raw MB/s and the recorded fidelity, checked against qiskit.quantum_info
  profile     cProfile of StateStore.prepare + commit in process, top lines
  scale       (--scale N) a .npy of N qubits written to disk by chunks, imported with cp
              through a fresh mount, then np.load of its statevector.npy through the mount
              against np.load of the plain file, the daemon's VmHWM after each step; then
              imported again under the default `auto` format (its evidence settles a
              random state as a state vector as it is written); the restore by a daemon
              mounted afresh is compared with the unseal floor measured at the same size
              (the 24-qubit floor scaled up leaves out the first touch of 4 GiB of pages)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from benchlib import Json, ratio, say

MB = 1e6
LOSSY_REPS = 8
AUTO_REPS = 4
STREAM_CONFIG = ("state_store:\n  default_serialization_format: statevector\n"
                 "  compression_level: fast\n  max_checkpoint_size_mb: 65536\n"
                 "performance:\n  max_buffered_mb_per_user: 65536\n")


def blas_kernel() -> list[Json]:
    from threadpoolctl import threadpool_info

    return [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info()]


def floor_seconds(vector: Any) -> float:
    """The issue's pipeline floor, one run: shuffle, zstd-1 (2 threads), AES-GCM, SHA-256."""
    return _floor_pipeline(vector)[0]


def unseal_floor_seconds(vector: Any, out: Any = None) -> float:
    """The same pipeline backwards, one run, on the floor's own output: AES-GCM open,
    zstd decompression (one thread: zstd decompresses a frame on one), byte unshuffle
    into a new array, or into `out` (of the vector's shape and dtype) where given."""
    import numpy as np
    import zstandard

    _, aead, nonce, sealed = _floor_pipeline(vector)
    width = vector.dtype.itemsize // 2
    started = time.perf_counter()
    body = zstandard.ZstdDecompressor().decompress(aead.decrypt(nonce, sealed, b"floor"))
    planes = np.frombuffer(body, dtype=np.uint8).reshape(width, -1)
    if out is None:
        np.ascontiguousarray(planes.T).reshape(-1).view(vector.dtype)
    else:
        out.view(np.uint8).reshape(-1, width)[...] = planes.T
    return time.perf_counter() - started


def unseal_floor_at_size_seconds(path: Path, chunk: int = 1 << 22) -> float:
    """The unseal floor of a whole .npy state on disk, one run, at its own size: the
    floor's pipeline (sealed untimed) per `chunk` amplitudes, each unsealed into its slot
    of one array of the state's size made at the start, as np.load makes its destination
    (whose first touch of each page is part of a restore's time at 4 GiB)."""
    import numpy as np

    state = np.load(path, mmap_mode="r")
    out = np.empty(state.shape, state.dtype)
    return sum(unseal_floor_seconds(np.array(state[s : s + chunk]), out[s : s + chunk])
               for s in range(0, state.size, chunk))


def _floor_pipeline(vector: Any) -> tuple[float, Any, bytes, bytes]:
    import hashlib

    import numpy as np
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    started = time.perf_counter()
    width = vector.dtype.itemsize // 2
    shuffled = np.ascontiguousarray(vector.view(np.uint8).reshape(-1, width).T)
    body = zstandard.ZstdCompressor(level=1, threads=2).compress(shuffled)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, body, b"floor")
    hashlib.sha256(sealed).hexdigest()
    return time.perf_counter() - started, aead, nonce, sealed


def bench_streaming(base: Path, quick: bool, scale: int | None, helpers: Any) -> Json:
    """helpers: the bench_states module (qfs_at, command, run_cp, Profiled, ...)."""
    import numpy as np

    n, reps = (20, 2) if quick else (24, 3)
    raw = 16 * 2**n
    psi = helpers.random_state(n, seed=n)
    report: Json = {"qubits": n, "raw_bytes": raw, "blas": blas_kernel(),
                    "mount_config": STREAM_CONFIG.strip()}
    say(f"streaming: floor, {n} qubits")
    floors = [floor_seconds(psi) for _ in range(reps)]
    report["floor"] = helpers.seconds_summary(floors, raw)
    report["unseal_floor"] = helpers.seconds_summary(
        [unseal_floor_seconds(psi) for _ in range(reps)], raw)
    single = psi.astype(np.complex64)
    report["floor_complex64"] = helpers.seconds_summary(
        [floor_seconds(single) for _ in range(reps)], raw)
    del single
    report.update(_in_process(base, psi, helpers))
    config = base / "stream.yaml"
    config.write_text(STREAM_CONFIG)
    plain = base / "plain-stream.npy"
    np.save(plain, psi)
    stream_base = base / "stream"
    stream_base.mkdir()
    with helpers.qfs_at(stream_base, config) as (mnt, proc, _log):
        report["mount"] = _through_mount(mnt, psi, plain, reps, helpers)
        report["floor_after_mount"] = helpers.seconds_summary(
            [floor_seconds(psi) for _ in range(reps)], raw)
        report["daemon_memory"] = helpers.process_memory_mib(proc.pid)
    floor_s = statistics.median([*floors, report["floor_after_mount"]["median_s"]])
    mount = report["mount"]
    report["ratios"] = {
        "checkpoint_floor_over_mount (goal >= 0.7)":
            ratio(floor_s, mount["checkpoint"]["median_s"]),
        "checkpoint_auto_floor_over_mount (goal >= 0.7)":
            ratio(floor_s, mount["checkpoint_auto"]["median_s"]),
        "restore_plain_over_mount (goal >= 0.7)":
            ratio(mount["plain_np_load"]["median_s"], mount["restore_np_load"]["median_s"]),
        "restore_unseal_floor_over_mount (goal >= 0.7)":
            ratio(report["unseal_floor"]["median_s"], mount["restore_np_load"]["median_s"]),
        "import_floor_over_mount": ratio(floor_s, mount["import_cp_s"]),
        "repeat_read_plain_over_mount":
            ratio(mount["plain_np_load"]["median_s"],
                  mount["repeat_np_load_through_mount"]["median_s"]),
        "lossy_raw_MB_per_s (goal >= 1000)": report["lossy"]["raw_MB_per_s"],
        "lossy_floor_raw_MB_per_s (same run)": report["floor_complex64"]["median_MB_per_s"],
        "lossy_ratio (goal <= 0.45)": report["lossy"]["compression_ratio"],
    }
    if scale:
        report["scale"] = _scale(base, scale, floor_s / raw, helpers)
    return report


def _in_process(base: Path, psi: Any, helpers: Any) -> Json:
    """prepare + commit profiled, and the complex64 checkpoint, on temporary fabrics."""
    from qiskit.quantum_info import Statevector, state_fidelity

    from levels.config import load_config
    from levels.fabric import Fabric
    from levels.states import Request

    out: Json = {}
    for precision in ("complex128", "complex64"):
        config = load_config()
        config.state_store.compression_level = "fast"
        config.state_store.amplitude_precision = precision
        fabric = Fabric(base / f"inproc-{precision}", config)
        try:
            # complex64's goal is a rate: more repetitions, unprofiled (two were too few
            # to tell a slow moment of this shared machine from the code).
            profiled = helpers.Profiled() if precision == "complex128" else None
            times = []
            for i in range(2 if profiled is not None else LOSSY_REPS):
                store = fabric.states

                def checkpoint(i: int = i, store: Any = store) -> None:
                    store.commit(store.prepare(Request(f"p{i}", format="statevector"), psi))

                if profiled is not None:
                    elapsed, _ = profiled(checkpoint)
                else:
                    started = time.perf_counter()
                    checkpoint()
                    elapsed = time.perf_counter() - started
                times.append(elapsed)
            meta = fabric.states.get("p0")
            if precision == "complex128":
                out["in_process_checkpoint"] = helpers.seconds_summary(times, psi.size * 16)
                out["profile"] = profiled.report(cumulative=16, own=12)
                out["in_process_checkpoint_auto"] = _auto_checkpoints(fabric, psi, helpers)
            else:
                _meta, decoded = fabric.states.load("p0")
                out["lossy"] = {
                    "seconds": [round(t, 4) for t in times],
                    "raw_MB_per_s": round(psi.size * 16 / MB / min(times), 1),
                    "median_raw_MB_per_s": round(psi.size * 16 / MB / statistics.median(times),
                                                 1),
                    "compression_ratio": round(meta["compression_ratio"], 4),
                    "fidelity_recorded": meta["fidelity"],
                    "fidelity_qiskit": state_fidelity(Statevector(psi), Statevector(decoded),
                                                      validate=False),
                    "note": f"best and median of {LOSSY_REPS} prepare+commit; the qiskit "
                            "figure carries ~1e-14 of rounding from summing 2^n products, the "
                            "recorded one is bounded from |psi - decoded|^2"}
        finally:
            fabric.close()
    return out


def _auto_checkpoints(fabric: Any, psi: Any, helpers: Any) -> Json:
    """The same checkpoint under `auto`, the default format (its choice included)."""
    from levels.states import Request

    times = []
    for i in range(AUTO_REPS):
        started = time.perf_counter()
        fabric.states.commit(fabric.states.prepare(Request(f"auto{i}"), psi))
        times.append(time.perf_counter() - started)
    meta = fabric.states.get("auto0")
    return {**helpers.seconds_summary(times, psi.size * 16),
            "format": meta["format"], "format_reason": meta["format_reason"]}


def _through_mount(mnt: Path, psi: Any, plain: Path, reps: int, helpers: Any) -> Json:
    import numpy as np

    n = round(math.log2(psi.size))
    raw = psi.size * 16
    source = mnt / "states" / "src"
    source.mkdir()
    import_s = helpers.run_cp(plain, source / "statevector.npy")
    helpers.command(mnt / "qubits" / "ctl", f"alloc {n} task=s topology=linear")
    ctl = mnt / "qubits" / "tasks" / "s" / "ctl"
    helpers.command(ctl, "restore src")
    checkpoints, restores, plains, mmaps, repeats = [], [], [], [], []
    for i in range(reps):
        name = f"c{i}"
        say(f"streaming: checkpoint {name} through the mount")
        checkpoints.append(helpers.command(ctl, f"checkpoint {name} format=statevector"))
        target = mnt / "states" / name / "statevector.npy"
        started = time.perf_counter()
        mapped = np.load(target, mmap_mode="r")
        head = np.array(mapped[:1024])
        mmaps.append(time.perf_counter() - started)
        del mapped
        for side in (("plain", "mount") if i % 2 else ("mount", "plain")):
            started = time.perf_counter()
            loaded = np.load(target if side == "mount" else plain)
            (restores if side == "mount" else plains).append(time.perf_counter() - started)
            if side == "mount":
                exact = bool(np.allclose(loaded, psi, rtol=1e-14, atol=0)) and \
                    bool(np.array_equal(head, loaded[:1024]))
            del loaded
        started = time.perf_counter()
        np.load(target)  # again: immutable, so from the kernel's page cache (keep_cache)
        repeats.append(time.perf_counter() - started)
        meta = json.loads((mnt / "states" / name / "meta.json").read_text())
        helpers.remove_checkpoint(mnt, name)
    chosen = []  # under `auto`, the default format
    for i in range(reps):
        say(f"streaming: checkpoint auto{i} through the mount")
        chosen.append(helpers.command(ctl, f"checkpoint auto{i} format=auto"))
        auto_meta = json.loads((mnt / "states" / f"auto{i}" / "meta.json").read_text())
        helpers.remove_checkpoint(mnt, f"auto{i}")
    return {"import_cp_s": round(import_s, 4),
            "checkpoint": helpers.seconds_summary(checkpoints, raw),
            "checkpoint_auto": {**helpers.seconds_summary(chosen, raw),
                                "format": auto_meta["format"]},
            "restore_np_load": helpers.seconds_summary(restores, raw),
            "plain_np_load": helpers.seconds_summary(plains, raw),
            "repeat_np_load_through_mount": helpers.seconds_summary(repeats, raw),
            "mmap_first_1024_amplitudes_s": [round(s, 5) for s in mmaps],
            "restored_equals_state": exact,
            "last_meta": {k: meta[k] for k in ("stored_bytes", "compression_ratio",
                                                "serialization_seconds", "fidelity",
                                                "chunked", "precision")}}


def _write_state(path: Path, n: int, seed: int) -> None:
    """A random normalised state of n qubits written as .npy by chunks (never whole)."""
    import numpy as np

    chunk = 1 << 22
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.complex128, shape=(2**n,))
    rng = np.random.default_rng(seed)
    norm2 = 0.0
    for start in range(0, array.size, chunk):
        part = rng.standard_normal(chunk) + 1j * rng.standard_normal(chunk)
        array[start : start + chunk] = part
        norm2 += float(np.vdot(part, part).real)
    scale = 1 / math.sqrt(norm2)
    for start in range(0, array.size, chunk):
        array[start : start + chunk] *= scale
    array.flush()
    del array


def _scale(base: Path, n: int, floor_s_per_byte: float, helpers: Any) -> Json:
    import numpy as np

    raw = 16 * 2**n
    path = base / f"psi{n}.npy"
    say(f"scale: writing a {n}-qubit state ({raw >> 20} MiB) by chunks")
    _write_state(path, n, seed=n)
    # On disk before the import, as a user's file would be: otherwise its writeback
    # competes with the import's own writes (20 s against 13 s at 28 qubits).
    started = time.perf_counter()
    os.sync()
    config = base / "scale.yaml"
    config.write_text(STREAM_CONFIG)
    scale_base = base / "scale"
    scale_base.mkdir()
    out: Json = {"qubits": n, "raw_bytes": raw, "machine_memory_MiB": round(
                     os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
                 "floor_s_scaled_from_the_smaller_state": round(floor_s_per_byte * raw, 3),
                 "rss_goal_MiB": round((1.25 * raw + (256 << 20)) / 2**20, 1),
                 "source_sync_s": round(time.perf_counter() - started, 3)}
    with helpers.qfs_at(scale_base, config) as (mnt, proc, _log):
        (mnt / "states" / "big").mkdir()
        say(f"scale: cp into /states/big ({n} qubits)")
        out["import_cp_s"] = round(helpers.run_cp(path, mnt / "states" / "big"
                                                  / "statevector.npy"), 3)
        out["daemon_after_import"] = helpers.process_memory_mib(proc.pid)
        peak = out["daemon_after_import"].get("VmHWM_MiB")
        out["import_peak_rss_within_goal"] = peak is not None and peak <= out["rss_goal_MiB"]
        meta = json.loads((mnt / "states" / "big" / "meta.json").read_text())
        out["meta"] = {k: meta[k] for k in ("stored_bytes", "compression_ratio",
                                             "serialization_seconds", "fidelity")}
        target = mnt / "states" / "big" / "statevector.npy"
        started = time.perf_counter()
        mapped = np.load(target, mmap_mode="r")
        middle = mapped.size // 2
        window = np.array(mapped[middle : middle + 4096])
        out["mmap_slice_of_4096_amplitudes_s"] = round(time.perf_counter() - started, 4)
        original = np.load(path, mmap_mode="r")
        out["mmap_slice_equals_state"] = bool(np.allclose(
            window, original[middle : middle + 4096], rtol=1e-14, atol=0))
        del mapped, original
        if 2 * raw > 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
            out["restore"] = "skipped: the state and its plain copy would not fit in memory"
            out["daemon_after_restore"] = helpers.process_memory_mib(proc.pid)
            path.unlink()
            return out
        say("scale: np.load through the mount, then of the plain file")
        started = time.perf_counter()
        loaded = np.load(target)
        out["restore_np_load_s"] = round(time.perf_counter() - started, 3)
        out["daemon_after_restore"] = helpers.process_memory_mib(proc.pid)
        original = np.load(path, mmap_mode="r")
        out["restored_equals_state"] = all(
            np.allclose(loaded[s : s + (1 << 24)], original[s : s + (1 << 24)], rtol=1e-14,
                        atol=0) for s in range(0, loaded.size, 1 << 24))
        del loaded, original
        started = time.perf_counter()
        plain = np.load(path)
        out["plain_np_load_s"] = round(time.perf_counter() - started, 3)
        del plain
        out["restore_plain_over_mount"] = ratio(out["plain_np_load_s"],
                                                out["restore_np_load_s"])
        out["import_floor_over_mount"] = ratio(out["floor_s_scaled_from_the_smaller_state"],
                                               out["import_cp_s"])
    # Right after the import the restore's figure depends on this VM's memory: np.load's
    # destination pages come back from the host (free page reporting) one fault at a time.
    # A daemon mounted afresh on the same data reads the checkpoint as a user would later.
    with helpers.qfs_at(scale_base, config) as (mnt, proc, _log):
        started = time.perf_counter()
        loaded = np.load(mnt / "states" / "big" / "statevector.npy")
        out["restore_by_a_fresh_daemon_np_load_s"] = round(time.perf_counter() - started, 3)
        del loaded
    say("scale: the unseal floor at this size, in process")
    out["unseal_floor_at_this_size_s"] = round(unseal_floor_at_size_seconds(path), 3)
    out["restore_by_a_fresh_daemon_unseal_floor_over_mount (goal >= 0.7)"] = ratio(
        out["unseal_floor_at_this_size_s"], out["restore_by_a_fresh_daemon_np_load_s"])
    shutil.rmtree(scale_base)
    out["auto"] = _import_under_auto(base, path, raw, helpers)
    path.unlink()
    return out


def _import_under_auto(base: Path, path: Path, raw: int, helpers: Any) -> Json:
    """cp of the same state into a mount whose default format is `auto` (the embedded
    default), its time, the daemon's VmHWM and the reason recorded."""
    config = base / "auto.yaml"
    config.write_text(STREAM_CONFIG.replace("default_serialization_format: statevector",
                                            "default_serialization_format: auto"))
    auto_base = base / "auto"
    auto_base.mkdir()
    out: Json = {}
    with helpers.qfs_at(auto_base, config) as (mnt, proc, _log):
        (mnt / "states" / "big").mkdir()
        say("scale: cp into /states/big under the auto format")
        out["import_cp_s"] = round(helpers.run_cp(path, mnt / "states" / "big"
                                                  / "statevector.npy"), 3)
        peak = helpers.process_memory_mib(proc.pid).get("VmHWM_MiB")
        out["daemon_VmHWM_MiB"] = peak
        out["peak_rss_within_goal"] = peak is not None \
            and peak <= (1.25 * raw + (256 << 20)) / 2**20
        meta = json.loads((mnt / "states" / "big" / "meta.json").read_text())
        out["meta"] = {k: meta[k] for k in ("format", "format_reason", "fidelity")}
    shutil.rmtree(auto_base)
    return out
