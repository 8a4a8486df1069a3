"""glibc malloc settings for the daemon's large buffers.

The daemon's large buffers are fresh memory: every chunk sealed or decoded is a new 4 MiB
array (a 28-qubit import seals 1,024 of them, each through a few buffers), and a state
held whole grows to its full size. On the virtual machines qfs runs on, a page fault
costs more than the copy that causes it, so the daemon asks glibc to

- map what it maps with transparent huge pages: the `glibc.malloc.hugetlb=1` tunable,
  read only at process start, so the command runs itself again once with it added to
  GLIBC_TUNABLES (a user's own setting is kept; glibc < 2.35 ignores it). Under perf,
  4 KiB faults were 40% of an import's writes; 26-qubit import: writes 1.66-3.1 ->
  0.74-1.1 s, the seal at close 2.6-3.1 -> 1.85-2.6 s.
- serve chunk-sized buffers from its arenas and trim the main arena only past 256 MiB
  freed at its top (mallopt, at start), so the next chunk's buffers reuse pages already
  faulted in. Threads' arenas (heaps of at most 64 MiB) are then never trimmed: each
  keeps what it grew to (the daemon holds ~50 MiB more after a 28-qubit import).
  With glibc's dynamic thresholds a 4 MiB free set the trim at 8 MiB, and the pipeline's
  few chunks in flight were given back and faulted in again: 28-qubit import 11.3-12.0
  -> 10.5-11.6 s, daemons alternating. (As tunables these two would not do: glibc 2.36
  rewrites a list of tunables in the environment in place, NUL-separated, so child
  processes would inherit a mangled one.)

QFS_MALLOC_TUNABLES=0 keeps the process as started.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
MARK = "QFS_MALLOC_TUNABLES"  # set on the run again ("1"), or "0" by a user who wants none
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def apply_malloc_settings() -> None:
    """Run this process again with the huge-page tunable unless that is done already,
    refused (QFS_MALLOC_TUNABLES=0) or the user's own, then set the thresholds."""
    if os.environ.get(MARK) == "0":
        return
    given = os.environ.get("GLIBC_TUNABLES", "")
    if MARK not in os.environ and TUNABLE not in given:
        env = {**os.environ, MARK: "1",
               "GLIBC_TUNABLES": ":".join(filter(None, (given, f"{TUNABLE}=1")))}
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):  # none to run again: carry on with 4 KiB pages
            os.execve(sys.executable, sys.orig_argv, env)
    _keep_chunk_buffers()


def _keep_chunk_buffers() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
