"""The reference's QFSTuner bottleneck rules, applied to the live metrics.

The compression rule is read as savings (1 - stored/raw) below 0.5, since the reference
flags a *ratio* under 0.5 as poor: a ratio that is better when higher.
"""

from typing import Any

from levels.metrics import Metrics

# (bottleneck, Metrics histogram, comparison, threshold or the Metrics attribute holding
# it, advice)
RULES: list[tuple[str, str, str, float | str, str]] = [
    ("SlowQubitAllocation", "qubit_allocation_seconds", ">", 0.010,
     "allocate smaller or less constrained shapes, or relax isolate= (fewer candidates fit)"),
    ("HighFeedforwardLatency", "feedforward_latency_seconds", ">", "feedforward_target_s",
     "keep live states small (dispatch is linear in 2^n) or use the dynamic-circuit path"),
    ("SlowStateSerialization", "serialization_seconds", ">", 1.0,
     "use amplitude_precision: complex64, compression_level: fast, or an MPS format"),
    ("SlowArtifactStorage", "artifact_store_seconds", ">", 0.100,
     "write OpenQASM 2 or simpler OpenQASM 3 (the reference importer is slow) or smaller "
     "circuits"),
]


def report(metrics: Metrics) -> dict[str, Any]:
    measured: dict[str, float | None] = {}
    bottlenecks = []
    for name, attribute, _op, threshold, advice in RULES:
        # A threshold may name the Metrics attribute holding a configured target.
        limit: float = getattr(metrics, threshold) if isinstance(threshold, str) else threshold
        value = metrics.average(getattr(metrics, attribute))
        measured[f"{attribute}_average"] = value
        if value is not None and value > limit:
            bottlenecks.append({"bottleneck": name, "average": value, "threshold": limit,
                                "recommendation": advice})
    ratio = metrics.compression_ratio._value.get()  # last checkpoint's stored/raw
    measured["compression_savings"] = 1 - ratio if ratio else None
    if ratio and 1 - ratio < 0.5:
        bottlenecks.append({"bottleneck": "PoorCompressionRatio", "savings": 1 - ratio,
                            "threshold": 0.5, "recommendation":
                            "dense states barely compress: choose format=auto (sparse, MPS, "
                            "stabilizer where they fit) or complex64 amplitudes"})
    metrics.exposition()  # refreshes the cache hit rate
    hit_rate = metrics.cache_hit_rate._value.get()
    measured["cache_hit_rate"] = hit_rate
    if hit_rate < 0.3:
        bottlenecks.append({"bottleneck": "LowCacheEfficiency", "hit_rate": hit_rate,
                            "threshold": 0.3, "recommendation": "raise cross_level.cache_size_mb"})
    return {"bottlenecks": bottlenecks, "measured": measured}
