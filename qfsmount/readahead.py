"""The kernel's read-ahead window for this mount.

FUSE asks the daemon for a file's pages in read-ahead windows, and a FUSE connection's
window is 128 KiB: reading a 256 MiB checkpoint is then 2,048 requests, each a round trip
through Python. The window is the mount's backing device's `read_ahead_kb` in sysfs,
writable by root only. FUSE's INIT reply can only narrow it, and INIT sets it no wider
than it was, so it is widened after INIT."""

from __future__ import annotations

import os
from pathlib import Path

SYSFS_BDI = Path("/sys/class/bdi")


def set_read_ahead(device: int, kib: int) -> str:
    """Set the window of the filesystem on `device` (st_dev) to `kib` KiB; what was done,
    for the log. Never fails the mount: without root the kernel's window stays."""
    knob = SYSFS_BDI / f"{os.major(device)}:{os.minor(device)}" / "read_ahead_kb"
    try:
        knob.write_text(f"{kib}\n")
    except OSError as exc:
        return f"read-ahead left as the kernel set it: {knob}: {exc.strerror}"
    return f"read-ahead {kib} KiB ({knob})"
