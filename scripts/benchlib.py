"""What the benchmark scripts share: mounting qfs (or any FUSE daemon) and always unmounting,
nearest-rank percentiles and one latency summary, progress lines, load averages, safe ratios,
sections that record their failure instead of losing the rest, and writing the final JSON."""

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Json = dict[str, Any]
STARTED = time.monotonic()
REPO = Path(__file__).resolve().parent.parent
# In-process sections import `levels` from the tree this script belongs to: the venv's
# editable install points at the development tree, so a baseline worktree's script would
# otherwise measure the development tree's code (as in-process baselines did before the
# ninth pass of issue 15). The scripts import the levels lazily, after this module.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
_VENV_PYTHON = REPO / ".venv" / "bin" / "python"
# `python -m` rather than the entry point: run with cwd set to a git worktree, that tree's
# own packages come first on sys.path, which is how the before/after benchmarks mount a
# baseline revision.
QFSMOUNT = [str(_VENV_PYTHON if _VENV_PYTHON.exists() else Path(sys.executable)), "-m",
            "qfsmount.cli"]
UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the JSON document."""
    print(f"[bench {time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def load() -> list[float]:
    """1/5/15-minute load averages: another benchmark on the same 2 cores shows up here."""
    return [round(x, 2) for x in os.getloadavg()]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded, or None when either is missing or the baseline 0."""
    if numerator is None or denominator is None or not denominator:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return round(numerator / denominator, 3)


# -- timing ----------------------------------------------------------------------------------


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """(elapsed seconds, result) of one call."""
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def repeat(action: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, in order."""
    return [timed(action)[0] for _ in range(repeats)]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted samples: an observed value, so with
    50 samples p99 is the slowest one; nan when there are none."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency(samples: Sequence[float], unit: str = "ms", digits: int = 3) -> Json:
    """The one summary of timings given in seconds: count, p50/p90/p99, min, max and mean in
    `unit` (s, ms or us); the count says how far a p99 can be trusted."""
    if not samples:
        return {"n": 0}
    scale = UNITS[unit]
    figures = {"p50": percentile(samples, 50), "p90": percentile(samples, 90),
               "p99": percentile(samples, 99), "min": min(samples), "max": max(samples),
               "mean": statistics.fmean(samples)}
    return {"n": len(samples),
            **{f"{name}_{unit}": round(value * scale, digits) for name, value in figures.items()}}


# -- mounting --------------------------------------------------------------------------------


def qfs_command(mountpoint: Path, data: Path, *extra: str) -> list[str]:
    """The command line of a foreground qfs daemon: `qfsmount MNT --data DATA -f EXTRA...`."""
    return [*QFSMOUNT, str(mountpoint), "--data", str(data), "-f", *extra]


def start_daemon(argv: list[str], mountpoint: Path, log: Path, *, cwd: Path = REPO,
                 env: Mapping[str, str] | None = None, timeout: float = 300) -> subprocess.Popen:
    """Start a foreground FUSE daemon, its output appended to `log`, and return once
    `mountpoint` is mounted; if it exits or the timeout passes first, it is stopped and the
    log's tail raised."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode} before "
                                   f"mounting: {log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mountpoint} not mounted within {timeout:.0f} s: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
    except BaseException:
        stop_daemon(mountpoint, proc, timeout=30)
        raise
    return proc


def stop_daemon(mountpoint: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Lazily unmount and reap the daemon; False when it had to be killed because it had not
    exited within `timeout` seconds."""
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                   check=False)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


@contextlib.contextmanager
def mounted(argv: list[str], mountpoint: Path, log: Path, *, cwd: Path = REPO,
            env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A foreground FUSE daemon (`qfs_command(...)` for qfs) mounted for the block; always
    lazily unmounted and reaped afterwards, even after errors."""
    proc = start_daemon(argv, mountpoint, log, cwd=cwd, env=env)
    try:
        yield proc
    finally:
        stop_daemon(mountpoint, proc)


def fs_type(path: Path) -> str:
    """The filesystem a path lives on (ext4, tmpfs...), from /proc/mounts."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for entry in mounts:
            fields = entry.split()
            if len(fields) > 2 and target.startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


def traceback_in(log: Path) -> Json:
    """Whether a daemon's output holds a traceback, and its tail when it does."""
    text = log.read_text(errors="replace")
    found: Json = {"daemon_log_has_traceback": "Traceback" in text}
    if found["daemon_log_has_traceback"]:
        found["daemon_log_tail"] = text[-4000:]
    return found


def command(ctl: Path, line: str) -> float:
    """One control command as `echo line > ctl` sends it (open, one write of the line and a
    newline, close); the seconds it took, as the write returns once the daemon is done."""
    payload = (line + "\n").encode()
    started = time.perf_counter()
    fd = os.open(ctl, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)
    return time.perf_counter() - started


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision`, for mounting qfs as it was (cwd=the tree)."""
    path = Path(tempfile.mkdtemp(prefix="qfs-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=REPO,
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO,
                       capture_output=True)


# -- sections and the report -----------------------------------------------------------------


def run_section(report: Json, name: str, action: Callable[[], Json]) -> None:
    """Run one part; a failure is recorded in the report rather than losing the others."""
    started = time.monotonic()
    load_before = load()
    try:
        report[name] = action()
    except Exception as exc:
        say(f"{name} failed: {exc!r}")
        report[name] = {"error": repr(exc), "traceback": traceback.format_exc()}
    report[name]["section_seconds"] = round(time.monotonic() - started, 1)
    report[name]["loadavg_before_after"] = [load_before, load()]


def finish(report: Json, out: Path | None) -> int:
    """Print the JSON document (and write it to `out`); the script's exit status."""
    report["total_seconds"] = round(time.monotonic() - STARTED, 1)
    report["loadavg_at_end"] = load()
    document = json.dumps(report, indent=2)
    print(document)
    if out:
        out.write_text(document + "\n")
    say(f"done in {report['total_seconds']} s")
    return 0
