"""Transparent huge pages for the daemon's large buffers.

The daemon's large buffers are fresh memory: a state being imported grows to its full
size (4 GiB at 28 qubits), and every chunk sealed or decoded is a new 4 MiB array. On the
virtual machines qfs runs on, a 4 KiB page fault costs more than the copy that causes it:
under perf, page faults were 40% of an import's writes. glibc's malloc asks the kernel for
transparent huge pages on what it maps when its `glibc.malloc.hugetlb` tunable says so
(glibc >= 2.35; elsewhere the variable is ignored), and tunables are read at process
start, so the command runs itself again once with it set. Measured on a 26-qubit import
through the mount (1 GiB, daemons alternating): writes 1.66-3.1 -> 0.74-1.1 s, the seal
at close 2.6-3.1 -> 1.85-2.6 s. QFS_HUGE_PAGES=0 keeps the process as started.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
MARK = "QFS_HUGE_PAGES"  # set on the run again ("1"), or "0" by a user who wants none


def run_again_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set; return only when
    that is done already, refused (QFS_HUGE_PAGES=0), or chosen otherwise by the user."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if MARK in os.environ or TUNABLE in tunables:
        return
    env = {**os.environ, MARK: "1",
           "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return  # cannot run again (no executable path): carry on with 4 KiB pages
