"""Typed configuration with embedded defaults, read from the reference's qfs.yaml shape.

Precedence, lowest first: embedded defaults, the YAML file, QFS_* environment variables.
Unknown keys and badly typed values are refused with a message naming the key, because a
typo in a config file must not silently fall back to a default.
"""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from levels.errors import Invalid


@dataclasses.dataclass
class CircuitFsConfig:
    storage_backend: str = "lmdb"
    s3_endpoint: str = ""  # accepted for the reference's schema; blobs are local for now
    s3_bucket: str = ""
    indexing_enabled: bool = True
    index_types: list[str] = dataclasses.field(default_factory=lambda: ["text", "metadata"])
    versioning_enabled: bool = True
    max_versions_per_artifact: int = 10
    retention_policy: str = "7d"
    search_result_limit: int = 10000
    similar_result_limit: int = 10
    index_commit_interval_ms: int = 1000
    lmdb_map_size_mb: int = 65536


@dataclasses.dataclass
class StateStoreConfig:
    storage_backend: str = "local_ssd"
    storage_path: str = ""  # empty: <data dir>/blobs
    default_serialization_format: str = "auto"  # or one of the seven; tensor_network = mps
    compression_enabled: bool = True
    compression_level: str = "balanced"  # fast (zstd 1), balanced (3), max (19), or a number
    compression_threads: int = 2
    encryption_enabled: bool = True
    encryption_algorithm: str = "AES-256-GCM"
    checkpoint_retention: str = "24h"
    max_checkpoint_size_mb: int = 1024
    amplitude_precision: str = "complex128"  # complex64 halves state vectors (fidelity kept)
    mps_max_bond: int = 64
    sparse_threshold: float = 0.0
    low_rank_k: int = 4
    shadow_snapshots: int = 2000


DEFAULT_DEVICES = [{"name": "eagle", "qubits": 127, "topology": "heavy_hex", "seed": 7}]


@dataclasses.dataclass
class LiveQubitConfig:
    allocation_strategy: str = "topology_noise_aware"
    feedforward_enabled: bool = True
    feedforward_latency_target_ms: int = 10
    isolation_level: str = "none"  # the default isolate= of alloc commands
    calibration_interval: str = "1h"
    telemetry_collection_interval: str = "1s"
    temporal_cooldown_ms: int = 1000
    # The first device is /qubits; the others appear under /devices/<name>/.
    devices: list[dict] = dataclasses.field(default_factory=lambda: list(DEFAULT_DEVICES))


@dataclasses.dataclass
class CrossLevelConfig:
    consistency_level: str = "strong"
    cache_enabled: bool = True
    cache_size_mb: int = 512
    migration_enabled: bool = True
    migration_fidelity_threshold: float = 0.95


@dataclasses.dataclass
class PerformanceConfig:
    max_concurrent_operations: int = 100
    io_threads: int = 4
    compression_threads: int = 2
    telemetry_buffer_size: int = 1000


@dataclasses.dataclass
class Config:
    circuit_fs: CircuitFsConfig = dataclasses.field(default_factory=CircuitFsConfig)
    live_qubit_mgr: LiveQubitConfig = dataclasses.field(default_factory=LiveQubitConfig)
    state_store: StateStoreConfig = dataclasses.field(default_factory=StateStoreConfig)
    cross_level: CrossLevelConfig = dataclasses.field(default_factory=CrossLevelConfig)
    performance: PerformanceConfig = dataclasses.field(default_factory=PerformanceConfig)
    # "section.key" -> where its value came from: a file path or QFS_* (default otherwise).
    provenance: dict[str, str] = dataclasses.field(default_factory=dict)

    def effective(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every setting with its value and origin, as /.qfs/config shows it."""
        shown: dict[str, dict[str, dict[str, Any]]] = {}
        for section in dataclasses.fields(self):
            if section.name == "provenance":
                continue
            values = dataclasses.asdict(getattr(self, section.name))
            shown[section.name] = {
                key: {"value": value,
                      "from": self.provenance.get(f"{section.name}.{key}", "default")}
                for key, value in values.items()
            }
        return shown


# The reference's four workload profiles, in this project's keys (applied over the defaults,
# under the file and the environment).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "simulation": {
        "cross_level": {"cache_size_mb": 1024},
        "state_store": {"default_serialization_format": "statevector",
                        "compression_enabled": False},
        "live_qubit_mgr": {"feedforward_enabled": False},
    },
    "nisq": {
        "cross_level": {"cache_size_mb": 512},
        "state_store": {"default_serialization_format": "shadow", "compression_enabled": True,
                        "compression_level": "max"},
        "live_qubit_mgr": {"feedforward_enabled": True, "feedforward_latency_target_ms": 5,
                           "calibration_interval": "30m"},
    },
    "fault_tolerant": {
        "circuit_fs": {"versioning_enabled": True, "max_versions_per_artifact": 100},
        "state_store": {"default_serialization_format": "stabilizer",
                        "encryption_enabled": True},
        "live_qubit_mgr": {"isolation_level": "strict", "telemetry_collection_interval": "100ms"},
    },
    "hybrid": {
        "state_store": {"default_serialization_format": "mps", "checkpoint_retention": "7d"},
        "live_qubit_mgr": {"allocation_strategy": "noise_aware", "feedforward_enabled": True},
    },
}

# QFS_* variables the reference names, mapped onto (section, key).
ENVIRONMENT = {
    "QFS_CIRCUIT_STORAGE_BACKEND": ("circuit_fs", "storage_backend"),
    "QFS_S3_ENDPOINT": ("circuit_fs", "s3_endpoint"),
    "QFS_INDEXING_ENABLED": ("circuit_fs", "indexing_enabled"),
    "QFS_MAX_VERSIONS": ("circuit_fs", "max_versions_per_artifact"),
    "QFS_STATE_STORAGE_PATH": ("state_store", "storage_path"),
    "QFS_STATE_COMPRESSION": ("state_store", "compression_enabled"),
    "QFS_STATE_ENCRYPTION": ("state_store", "encryption_enabled"),
    "QFS_ALLOCATION_STRATEGY": ("live_qubit_mgr", "allocation_strategy"),
    "QFS_FEEDFORWARD_ENABLED": ("live_qubit_mgr", "feedforward_enabled"),
    "QFS_CONSISTENCY_LEVEL": ("cross_level", "consistency_level"),
    "QFS_CACHE_ENABLED": ("cross_level", "cache_enabled"),
}
_DEVICE_KEYS = {"name": str, "qubits": int, "topology": str, "seed": int}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a YAML or environment value to the type of its default, or refuse it."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif key.endswith(".devices"):
        return [_device(f"{key}[{i}]", d) for i, d in enumerate(value or [])] if isinstance(
            value, list) and value else _refuse(key, "a non-empty list of devices", value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return [str(v) for v in value]
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str) and isinstance(value, str | int | float):
        return str(value)
    return _refuse(key, type(default).__name__, value)


def _refuse(key: str, expected: str, value: Any) -> Any:
    raise Invalid(f"config key {key}: expected {expected}, got {value!r}")


def _device(key: str, value: Any) -> dict:
    if not isinstance(value, dict) or not {"name", "qubits", "topology"} <= set(value):
        return _refuse(key, "a mapping with name, qubits, topology (and seed)", value)
    for field, kind in _DEVICE_KEYS.items():
        if field in value and not isinstance(value[field], kind):
            return _refuse(f"{key}.{field}", kind.__name__, value[field])
    unknown = set(value) - set(_DEVICE_KEYS)
    if unknown:
        return _refuse(f"{key}.{sorted(unknown)[0]}", "a known device key", "unknown key")
    return {"seed": 7, **value}


def _apply(config: "Config", section: str, values: Mapping[str, Any], origin: str) -> None:
    section_obj = getattr(config, section)
    known = {f.name for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
        if key not in known:
            raise Invalid(f"config key {section}.{key}: unknown key")
        current = getattr(section_obj, key)
        setattr(section_obj, key, _coerce(f"{section}.{key}", value, current))
        config.provenance[f"{section}.{key}"] = origin


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None,
                profile: str | None = None) -> Config:
    """Build the effective configuration: defaults, a profile (--profile or QFS_PROFILE), an
    optional YAML file, then QFS_* variables."""
    config = Config()
    sections = {f.name for f in dataclasses.fields(config)} - {"provenance"}
    env = os.environ if environ is None else environ
    profile = profile or env.get("QFS_PROFILE")
    if profile is not None:
        if profile not in PROFILES:
            raise Invalid(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
        for section, values in PROFILES[profile].items():
            _apply(config, section, values, f"profile {profile}")
    if path is not None:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise Invalid(f"config file {path}: {exc}") from exc
        root = document.get("quantum_data_fabric", document) if isinstance(document, dict) else None
        if not isinstance(root, dict):
            raise Invalid(f"config file {path}: expected a mapping at the top")
        for section, values in root.items():
            if section not in sections:
                raise Invalid(f"config key {section}: unknown section")
            if not isinstance(values, dict):
                raise Invalid(f"config key {section}: expected a mapping")
            _apply(config, section, values, str(path))
    for variable, (section, key) in ENVIRONMENT.items():
        if variable in env:
            _apply(config, section, {key: env[variable]}, variable)
    return config


def default_data_dir() -> Path:
    """Per-user data directory, as XDG asks: $XDG_DATA_HOME/qfs or ~/.local/share/qfs."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "qfs"
