"""Run every scripts/bench_*.py and gather their goals into one JSON and one markdown table.

Each benchmark writes bench-results/<name>.json (its full figures, baselines measured in the
same run). This script then collects every goal the benchmarks evaluate (keys named `met`,
`meets_goal_*`, `goal_*`, `*_meets_goal_*`) with the figures beside them into
bench-results/summary.json and bench-results/SUMMARY.md, which the README links.

    .venv/bin/python scripts/bench_all.py [--quick] [--only circuitfs,qubits,...]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench-results"
BENCHES = ["qubits", "states", "ops", "compiled", "workers", "walk", "circuitfs"]  # quickest first


def goals(document: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, verdict) of every goal a benchmark evaluated, depth first."""
    found: list[tuple[str, Any]] = []
    if isinstance(document, dict):
        if "met" in document and ("goal" in document or "value" in document):
            value = document.get("value")
            found.append((path, f"{'met' if document['met'] else 'MISSED'}: {value} "
                                f"(goal {document.get('better', '')} {document.get('goal')})"))
            return found
        for key, value in document.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(value, bool) and ("meets_goal" in key or key.startswith("goal_")):
                found.append((child, "met" if value else "MISSED"))
            else:
                found.extend(goals(value, child))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            label = value.get("qubits", index) if isinstance(value, dict) else index
            if isinstance(value, dict) and "topology" in value:
                label = f"{value['qubits']}-{value['topology']}"
            found.extend(goals(value, f"{path}[{label}]"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--summarize-only", action="store_true",
                        help="rebuild the summary from the JSON files already there")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    summary: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "quick": args.quick, "benchmarks": {}}
    for name in args.only.split(","):
        out = RESULTS / f"bench_{name}.json"
        command = [sys.executable, str(REPO / "scripts" / f"bench_{name}.py"), "--out", str(out)]
        if args.quick:
            command.append("--quick")
        started = time.monotonic()
        code = 0
        if not args.summarize_only:
            print(f"[bench_all] {name} ...", file=sys.stderr, flush=True)
            code = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
        entry: dict[str, Any] = {"exit": code, "seconds": round(time.monotonic() - started, 1)}
        if out.exists():
            entry["goals"] = dict(goals(json.loads(out.read_text())))
        summary["benchmarks"][name] = entry
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Benchmark summary ({summary['when']}{', quick' if args.quick else ''})", "",
             "Full figures with their same-run baselines: `bench_<name>.json` beside this file.",
             "", "| benchmark | goal | result |", "|---|---|---|"]
    for name, entry in summary["benchmarks"].items():
        for path, verdict in entry.get("goals", {}).items():
            lines.append(f"| {name} | `{path}` | {verdict} |")
        if entry["exit"]:
            lines.append(f"| {name} | (run) | exit status {entry['exit']} |")
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
