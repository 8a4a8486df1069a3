"""What the benchmark scripts share: progress lines, load averages, safe ratios, sections
that record their failure instead of losing the rest, and writing the final JSON."""

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

Json = dict[str, Any]
STARTED = time.monotonic()


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
