"""The soak test's short variant (scripts/soak.py): 8 clients doing a realistic mix for
half a minute with a remount; it fails if the daemon dies, a request hangs more than 30 s or
gets EIO, an acknowledged write is missing, or the offline check finds a problem."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


def test_half_minute_soak():
    done = subprocess.run([sys.executable, str(SOAK), "--minutes", "0.5"], capture_output=True,
                          text=True, timeout=600)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report["failures"] or done.stderr[-2000:]
    assert report["remounts"] >= 1
    assert sum(report["requests"].values()) > 50
