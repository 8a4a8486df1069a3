"""The fabric's metrics, with the reference's names and bucket boundaries.

One prometheus_client registry per fabric (not the global one), so that several fabrics in
one process (tests) do not collide; /.qfs/metrics is its text exposition.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, feedforward_target_s: float = 0.010) -> None:
        # live_qubit_mgr.feedforward_latency_target_ms: what tuning's feed-forward rule checks.
        self.feedforward_target_s = feedforward_target_s
        self.registry = CollectorRegistry()
        r = self.registry
        self.qubit_allocation_seconds = Histogram(
            "qfs_qubit_allocation_seconds", "Qubit allocation time",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5), registry=r)
        self.feedforward_latency_seconds = Histogram(
            "qfs_feedforward_latency_seconds", "Feed-forward operation latency",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05), registry=r)
        self.gate_operation_seconds = Histogram(
            "qfs_gate_operation_seconds", "Time of a run or apply on the simulated device",
            buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 5.0), registry=r)
        self.qubit_utilization = Gauge(
            "qfs_qubit_utilization", "Fraction of a device's qubits allocated or buffered",
            ["device"], registry=r)
        self.isolation_violations = Counter(
            "qfs_isolation_violations_total", "Allocations refused to keep isolation",
            registry=r)

        self.serialization_seconds = Histogram(
            "qfs_state_serialization_seconds", "Quantum state serialization time",
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0), registry=r)
        self.deserialization_seconds = Histogram(
            "qfs_state_deserialization_seconds", "Quantum state restore time",
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0), registry=r)

        self.migration_fidelity = Histogram(
            "qfs_migration_fidelity", "Fidelity of migrated states",
            buckets=(0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0), registry=r)
        self.migration_success_rate = Gauge(
            "qfs_migration_success_rate", "Fraction of migrations that succeeded", registry=r)
        self.level_transition_seconds = Histogram(
            "qfs_level_transition_seconds", "Time of a cross-level operation (migration)",
            buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 5.0), registry=r)

        self.artifact_store_seconds = Histogram(
            "qfs_artifact_store_seconds", "Time to validate and store a circuit version",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0), registry=r)
        self.search_latency_seconds = Histogram(
            "qfs_search_latency_seconds", "Search query time",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0), registry=r)
        self.checkpoint_size_bytes = Histogram(
            "qfs_checkpoint_size_bytes", "Stored size of checkpoints",
            buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9), registry=r)
        self.compression_ratio = Gauge(
            "qfs_compression_ratio", "Stored bytes over raw bytes of the last checkpoint",
            registry=r)
        self.cache_hit_rate = Gauge(
            "qfs_cache_hit_rate", "Hit rate of the decoded-circuit and view caches", registry=r)
        self.caches: list = []  # LRUs whose hit rate the gauge reports

    def exposition(self) -> bytes:
        hits = sum(c.hits for c in self.caches)
        lookups = hits + sum(c.misses for c in self.caches)
        self.cache_hit_rate.set(hits / lookups if lookups else 1.0)
        return generate_latest(self.registry)

    def average(self, histogram: Histogram) -> float | None:
        """Mean of a histogram's observations, or None before the first."""
        total, count = _sum_and_count(histogram)
        return total / count if count else None

    def count(self, histogram: Histogram) -> int:
        """How many observations a histogram has had."""
        return int(_sum_and_count(histogram)[1])


def _sum_and_count(histogram: Histogram) -> tuple[float, float]:
    total = count = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count
