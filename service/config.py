"""One frozen, typed configuration for spinegate.

Built once: defaults, then a YAML file, then ``SPINEGATE_<SECTION>__<KEY>``
environment variables (e.g. ``SPINEGATE_NETWORK__PORT=11113``), then CLI
overrides. Bad values raise `ConfigError` naming the key and value. This is
the only module that reads ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import os
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["ConfigError", "Destination", "RoutingRule", "SpinegateConfig", "load_config"]

ENV_PREFIX = "SPINEGATE_"
# inference.axial_precision values (service.engines maps them to model files).
AXIAL_PRECISIONS = ("int8", "fp32")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names key and value."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives our SEG and SR (C-STORE SCP)."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not (1 <= len(self.ae_title) <= 16):
            raise ConfigError(f"Invalid 'ae_title' value {self.ae_title!r} - must be 1-16 characters")
        if not (0 < int(self.port) < 65536):
            raise ConfigError(f"Invalid 'port' value {self.port!r} - must be 1-65535")


@dataclass(frozen=True)
class RoutingRule:
    """Maps a series class to an engine; the first matching rule wins.

    ``planes`` and ``weightings`` list accepted values (empty = any).
    """

    name: str
    engine: str
    planes: tuple[str, ...] = ()
    weightings: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkConfig:
    ae_title: str = "SPINEGATE"
    host: str = "127.0.0.1"
    port: int = 11112
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    maximum_associations: int = 10
    # Largest PDU we accept (bytes). Peers send P-DATA in pieces of this size:
    # pynetdicom's default 16 KiB cuts a 512x512 image into 32 PDUs, 1 MiB
    # sends it whole (+13 % instances/s, -15 % CPU per instance measured).
    maximum_pdu_bytes: int = 1_048_576
    # Processes accepting associations on the port (SO_REUSEPORT: the kernel
    # spreads new connections over them). One Python process is bound by the
    # GIL; parallel senders gain from more.
    receiver_processes: int = 1


@dataclass(frozen=True)
class StorageConfig:
    root: Path = Path("var")
    delete_inputs_after_export: bool = False

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def state_db(self) -> Path:
        return self.root / "state.sqlite"

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.sqlite"


@dataclass(frozen=True)
class AssemblyConfig:
    quiet_period_s: float = 20.0


@dataclass(frozen=True)
class InferenceConfig:
    backend: str = "onnxruntime"
    threads: int = 2
    # The axial model ONNX Runtime runs on CPU: "int8" (quantised,
    # `inference.quantize`; ~1.6x faster, its own area calibration) or
    # "fp32" (the trained model itself).
    axial_precision: str = "int8"
    # The models shipped inside the package (importlib.resources: a file
    # system path in a wheel and in an editable install alike).
    model_dir: Path = Path(str(resources.files("spinegate.inference") / "models"))


@dataclass(frozen=True)
class ExportConfig:
    destinations: tuple[Destination, ...] = ()
    calling_ae_title: str = "SPINEGATE"
    attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass(frozen=True)
class QueueConfig:
    """The task queue: embedded SQLite (one process) or Redis (scale-out:
    receivers and ``spinegate worker`` processes share it)."""

    backend: str = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    name: str = "spinegate"
    consume_in_serve: bool = True  # false: 'serve' only receives; 'spinegate worker' processes
    processing_lease_s: float = 900.0  # Redis mode: a study 'processing' longer than this is re-queued


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP endpoint: /metrics, /healthz, /readyz and the status API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    min_free_disk_bytes: int = 1_000_000_000  # /readyz fails below this on the storage volume


@dataclass(frozen=True)
class BiomechanicsConfig:
    """Subject-specific OpenSim loads after the sagittal measurements."""

    enabled: bool = True


@dataclass(frozen=True)
class SpinegateConfig:
    """Every setting of a spinegate process, grouped by section."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    biomechanics: BiomechanicsConfig = field(default_factory=BiomechanicsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    routing: tuple[RoutingRule, ...] = (
        RoutingRule("sag_t1", "sagittal_spine", ("sagittal",), ("T1",)),
        RoutingRule("sag_t2", "sagittal_spine", ("sagittal",), ("T2",)),
        RoutingRule("ax_t1_t2", "axial_muscle", ("axial",), ("T1", "T2")),
        RoutingRule("ax_dixon_water", "axial_muscle", ("axial",), ("water",)),
    )

    def __post_init__(self) -> None:
        if self.assembly.quiet_period_s < 0:
            raise ConfigError(f"Invalid 'assembly.quiet_period_s' value {self.assembly.quiet_period_s!r} - must be >= 0")
        if self.inference.backend not in ("onnxruntime", "auto"):
            raise ConfigError(f"Invalid 'inference.backend' value {self.inference.backend!r} - "
                              "must be 'onnxruntime' or 'auto'")
        if self.inference.axial_precision not in AXIAL_PRECISIONS:
            raise ConfigError(f"Invalid 'inference.axial_precision' value {self.inference.axial_precision!r} - "
                              f"must be one of {', '.join(AXIAL_PRECISIONS)}")
        if not (0 <= int(self.http.port) < 65536):
            raise ConfigError(f"Invalid 'http.port' value {self.http.port!r} - must be 0-65535")
        if self.queue.backend not in ("sqlite", "redis"):
            raise ConfigError(f"Invalid 'queue.backend' value {self.queue.backend!r} - must be 'sqlite' or 'redis'")
        if not (4096 <= self.network.maximum_pdu_bytes <= 64 * 1_048_576):
            raise ConfigError(f"Invalid 'network.maximum_pdu_bytes' value {self.network.maximum_pdu_bytes!r} - "
                              "must be 4096-67108864")
        if not (1 <= self.network.receiver_processes <= 64):
            raise ConfigError(f"Invalid 'network.receiver_processes' value {self.network.receiver_processes!r} - "
                              "must be 1-64")
        if self.export.attempts < 1:
            raise ConfigError(f"Invalid 'export.attempts' value {self.export.attempts!r} - must be >= 1")

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data (nothing secret is held)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


_SECTIONS = {
    "network": NetworkConfig,
    "storage": StorageConfig,
    "assembly": AssemblyConfig,
    "inference": InferenceConfig,
    "export": ExportConfig,
    "biomechanics": BiomechanicsConfig,
    "http": HttpConfig,
    "queue": QueueConfig,
}


def _coerce(section: str, key: str, raw: Any, target_type: Any) -> Any:
    name = f"{section}.{key}"
    try:
        if key == "destinations":
            return tuple(Destination(str(d["ae_title"]), str(d["host"]), int(d["port"])) for d in (raw or []))
        if target_type in (int, "int"):
            return int(raw)
        if target_type in (float, "float"):
            return float(raw)
        if target_type in (bool, "bool"):
            if isinstance(raw, str):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError("not a boolean")
                return raw.lower() in ("1", "true", "yes")
            return bool(raw)
        if target_type in (Path, "Path"):
            return Path(raw)
        return str(raw)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"Invalid '{name}' value {raw!r} - {e}") from e


def _build(data: Mapping[str, Any]) -> SpinegateConfig:
    kwargs: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        values = dict(data.get(section) or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"Unknown key(s) in section '{section}': {sorted(unknown)}")
        kwargs[section] = cls(**{k: _coerce(section, k, v, fields[k].type) for k, v in values.items()})
    if "routing" in data:
        try:
            kwargs["routing"] = tuple(
                RoutingRule(str(r["name"]), str(r["engine"]), tuple(r.get("planes", ())), tuple(r.get("weightings", ())))
                for r in data["routing"]
            )
        except (TypeError, KeyError) as e:
            raise ConfigError(f"Invalid 'routing' value - each rule needs name and engine ({e})") from e
    unknown = set(data) - set(_SECTIONS) - {"routing"}
    if unknown:
        raise ConfigError(f"Unknown section(s): {sorted(unknown)}")
    return SpinegateConfig(**kwargs)


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SpinegateConfig:
    """Defaults ← YAML file ← environment ← ``overrides`` (CLI).

    Raises
    ------
    ConfigError
        If the file cannot be parsed or any value is invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"Cannot read configuration file {str(path)!r}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"Configuration file {str(path)!r} must hold a mapping")
        data.update(loaded)
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section == "export" and key == "destinations":
            data.setdefault(section, {})[key] = yaml.safe_load(raw)
        else:
            data.setdefault(section, {})[key] = raw
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return _build(data)
