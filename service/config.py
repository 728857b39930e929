"""One frozen, validated configuration for spinegate (pydantic-settings).

Built once: defaults, then a YAML file, then ``SPINEGATE_<SECTION>__<KEY>``
environment variables (e.g. ``SPINEGATE_NETWORK__PORT=11113``), then CLI
overrides. Every key is checked for its type and range; routing planes and
weightings are parsed into the classifier's enums. Any invalid value raises
`ConfigError` naming the key (the CLI exits with status 2). Secrets are
`SecretStr` and print as ``**********``. This is the only module that reads
``os.environ``.
"""
from __future__ import annotations

import os
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Mapping

import yaml
from pydantic import Field, IPvAnyNetwork, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)

from spinegate.dicom_io.classify import Plane, Weighting
from spinegate.service.config_fields import (AETitle, AxialPrecision, DestinationTLS, EngineName, InferenceBackend,
                                             NetworkTLS, OutputKind, Port, QueueBackend, Seconds, Section,
                                             enum_member)

# The enums are defined in config_fields and named here, where callers look.
__all__ = ["AxialPrecision", "ConfigError", "Destination", "EngineName", "InferenceBackend", "OutputKind",
           "OutputsConfig", "QueueBackend", "RoutingRule", "SpinegateConfig", "load_config"]

ENV_PREFIX = "SPINEGATE_"
_ENV_DELIMITER = "__"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and value."""


class Destination(Section):
    """A DICOM peer that receives our SEG and SR (C-STORE SCP);
    ``calling_ae_title`` is how spinegate names itself to that peer (default
    ``export.calling_ae_title``); ``tls`` turns DICOM TLS on for it."""

    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    calling_ae_title: AETitle | None = None
    tls: DestinationTLS | None = None
    # What this peer receives (a PACS whose viewer shows neither SEG nor SR
    # may take only the key images and the PDF report).
    objects: tuple[OutputKind, ...] = Field(tuple(OutputKind), min_length=1)

    def tls_args(self) -> tuple[Any, str] | None:
        """(ssl context, server name) for pynetdicom, or None for plain TCP."""
        return None if self.tls is None else (self.tls.context(), self.tls.server_name or self.host)

    def __init__(self, ae_title: str | None = None, host: str | None = None, port: int | None = None,
                 **data: Any) -> None:
        # Positional construction, as the field order reads: Destination("PACS", "pacs", 104).
        positional = {k: v for k, v in (("ae_title", ae_title), ("host", host), ("port", port)) if v is not None}
        super().__init__(**positional, **data)


class RoutingRule(Section):
    """Maps a series class to an engine; the first matching rule wins.

    ``planes`` and ``weightings`` list accepted values (empty = any).
    """

    name: str = Field(min_length=1)
    engine: EngineName
    planes: tuple[Annotated[Plane, enum_member(Plane)], ...] = ()
    weightings: tuple[Annotated[Weighting, enum_member(Weighting)], ...] = ()


class NetworkConfig(Section):
    ae_title: AETitle = "SPINEGATE"
    host: str = Field("127.0.0.1", min_length=1)
    port: Port = 11112
    acse_timeout_s: Seconds = 30.0
    dimse_timeout_s: Seconds = 30.0
    network_timeout_s: Seconds = 60.0
    maximum_associations: int = Field(10, ge=1, le=1000)
    # Largest PDU we accept (bytes). Peers send P-DATA in pieces of this size:
    # pynetdicom's default 16 KiB cuts a 512x512 image into 32 PDUs, 1 MiB
    # sends it whole (+13 % instances/s, -15 % CPU per instance measured).
    maximum_pdu_bytes: int = Field(1_048_576, ge=4096, le=64 * 1_048_576)
    # Processes accepting associations on the port (SO_REUSEPORT: the kernel
    # spreads new connections over them). One Python process is bound by the
    # GIL; parallel senders gain from more.
    receiver_processes: int = Field(1, ge=1, le=64)
    # Who may send: calling AE titles and peer addresses/networks (empty: any).
    allowed_calling_ae_titles: tuple[AETitle, ...] = ()
    allowed_hosts: tuple[IPvAnyNetwork, ...] = ()
    tls: NetworkTLS = NetworkTLS()


class StorageConfig(Section):
    root: Path = Path("var")
    delete_inputs_after_export: bool = False
    # Back-pressure: below this free space on the storage volume every
    # C-STORE is answered 0xA700 (out of resources) and nothing is written.
    min_free_bytes: int = Field(500_000_000, ge=0)

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


class AssemblyConfig(Section):
    quiet_period_s: float = Field(20.0, ge=0, le=86_400)


class InferenceConfig(Section):
    backend: InferenceBackend = InferenceBackend.ONNXRUNTIME
    threads: int = Field(2, ge=1, le=256)
    axial_precision: AxialPrecision = AxialPrecision.INT8
    # The models shipped inside the package (importlib.resources: a file
    # system path in a wheel and in an editable install alike).
    model_dir: Path = Path(str(resources.files("spinegate.inference") / "models"))


class ExportConfig(Section):
    destinations: tuple[Destination, ...] = ()
    calling_ae_title: AETitle = "SPINEGATE"
    attempts: int = Field(5, ge=1, le=100)
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 60.0

    @model_validator(mode="after")
    def _backoff_grows(self) -> ExportConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_initial_s "
                             f"({self.backoff_initial_s})")
        return self


class QueueConfig(Section):
    """The task queue: embedded SQLite (one process) or Redis (scale-out:
    receivers and ``spinegate worker`` processes share it)."""

    backend: QueueBackend = QueueBackend.SQLITE
    # May carry a password (redis://:secret@host/0): kept as a secret.
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    name: str = Field("spinegate", min_length=1)
    consume_in_serve: bool = True  # false: 'serve' only receives; 'spinegate worker' processes
    processing_lease_s: Seconds = 900.0  # Redis mode: a study 'processing' longer than this is re-queued

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr) -> SecretStr:
        if not url.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


MIN_AUTH_TOKEN_CHARS = 16


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file: {type(e).__name__}") from None
    if len(token) < MIN_AUTH_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"the token must be one word of at least {MIN_AUTH_TOKEN_CHARS} characters")
    return token


class HttpConfig(Section):
    """The HTTP endpoint: /metrics, /healthz, /readyz and the status API.

    State-changing calls (``POST``) need ``Authorization: Bearer <token>``
    with the token in ``auth_token_file``; without that file they are
    refused. Read-only endpoints are open."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port
    min_free_disk_bytes: int = Field(1_000_000_000, ge=0)  # /readyz fails below this on the storage volume
    auth_token_file: Path | None = None
    # /readyz and the spinegate_ready metric reuse one evaluation of the
    # checks (one of which writes a probe file to the spool) for this long.
    readiness_cache_s: float = Field(5.0, ge=0, le=300)

    @field_validator("auth_token_file")
    @classmethod
    def _token_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            _read_token(path)
        return path

    def auth_token(self) -> SecretStr | None:
        """The bearer token, read from ``auth_token_file`` (None without one)."""
        return None if self.auth_token_file is None else SecretStr(_read_token(self.auth_token_file))


class OutputsConfig(Section):
    """Objects written beside the SEGs and the SR: key images (Secondary
    Capture with the results burned in) and the PDF report (Encapsulated
    PDF), for viewers that show neither SEG nor SR."""

    key_images: bool = True
    pdf_report: bool = True
    # First-order and shape features of every vertebral body and disc
    # (IBSI; measurements.json, the SR, batch CSVs): for research, off by
    # default (about a second more per sagittal series in the SR).
    radiomics: bool = False
    # T2 per disc and a DICOM Parametric Map when the study has a sagittal
    # stack at three or more echo times (a multi-echo series, or single-echo
    # series of one geometry and TR).
    relaxometry: bool = True


class BiomechanicsConfig(Section):
    """Subject-specific OpenSim loads after the sagittal measurements."""

    enabled: bool = True


DEFAULT_ROUTING = (
    RoutingRule(name="sag_t1", engine=EngineName.SAGITTAL_SPINE, planes=(Plane.SAGITTAL,), weightings=(Weighting.T1,)),
    RoutingRule(name="sag_t2", engine=EngineName.SAGITTAL_SPINE, planes=(Plane.SAGITTAL,), weightings=(Weighting.T2,)),
    RoutingRule(name="ax_t1_t2", engine=EngineName.AXIAL_MUSCLE, planes=(Plane.AXIAL,),
                weightings=(Weighting.T1, Weighting.T2)),
    RoutingRule(name="ax_dixon_water", engine=EngineName.AXIAL_MUSCLE, planes=(Plane.AXIAL,),
                weightings=(Weighting.WATER,)),
)

# The YAML file and the environment of the `load_config` call in progress
# (pydantic-settings builds its sources inside the class).
_yaml_file: ContextVar[Path | None] = ContextVar("spinegate_config_yaml", default=None)
_environ: ContextVar[Mapping[str, str] | None] = ContextVar("spinegate_config_environ", default=None)


class _Environment(EnvSettingsSource):
    """``SPINEGATE_<SECTION>__<KEY>`` from the given mapping (the process
    environment unless `load_config` was handed one); structured values
    (``export.destinations``, ``routing``) are YAML, of which JSON is a part."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _environ.get()
        return super()._load_env_vars() if given is None else {k.lower(): v for k, v in given.items()}

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        return yaml.safe_load(value)


class SpinegateConfig(BaseSettings):
    """Every setting of a spinegate process, grouped by section."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix=ENV_PREFIX,
                                      env_nested_delimiter=_ENV_DELIMITER, case_sensitive=False,
                                      validate_default=True)

    network: NetworkConfig = NetworkConfig()
    storage: StorageConfig = StorageConfig()
    assembly: AssemblyConfig = AssemblyConfig()
    inference: InferenceConfig = InferenceConfig()
    export: ExportConfig = ExportConfig()
    biomechanics: BiomechanicsConfig = BiomechanicsConfig()
    outputs: OutputsConfig = OutputsConfig()
    http: HttpConfig = HttpConfig()
    queue: QueueConfig = QueueConfig()
    routing: tuple[RoutingRule, ...] = Field(DEFAULT_ROUTING, min_length=1)

    @field_validator("routing")
    @classmethod
    def _unique_rule_names(cls, rules: tuple[RoutingRule, ...]) -> tuple[RoutingRule, ...]:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        return rules

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _Environment(settings_cls)]
        if (path := _yaml_file.get()) is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked."""
        return self.model_dump(mode="json")


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    if error["type"] == "extra_forbidden":
        return f"Unknown key '{key}'"
    value = error.get("input")
    shown = "**********" if "redis_url" in key or isinstance(value, SecretStr) else repr(value)
    return f"Invalid '{key}' value {shown} - {error['msg'].removeprefix('Value error, ')}"


def _check_sections(environ: Mapping[str, str]) -> None:
    # Variables naming no section would otherwise be ignored without a word.
    known = set(SpinegateConfig.model_fields)
    for name in environ:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and _ENV_DELIMITER in upper:
            section = upper[len(ENV_PREFIX):].partition(_ENV_DELIMITER)[0].lower()
            if section not in known:
                raise ConfigError(f"Unknown section '{section}' in environment variable {name}")


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SpinegateConfig:
    """Defaults ← YAML file ← environment ← ``overrides`` (CLI; ``None``
    values are left out).

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or any value is invalid: one
        line per problem, each naming its key.
    """
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"Cannot read configuration file {str(path)!r}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Configuration file {str(path)!r} must hold a mapping")
    _check_sections(os.environ if environ is None else environ)
    init: dict[str, Any] = {section: {k: v for k, v in values.items() if v is not None}
                            for section, values in (overrides or {}).items()}
    yaml_token, env_token = _yaml_file.set(Path(path) if path is not None else None), _environ.set(environ)
    try:
        return SpinegateConfig(**init)
    except ValidationError as e:
        errors = e.errors()
        # A bad item also fails its list's length check: report the item only.
        locs = [tuple(err["loc"]) for err in errors]
        shown = [err for err, loc in zip(errors, locs)
                 if not any(len(other) > len(loc) and other[:len(loc)] == loc for other in locs)]
        raise ConfigError("\n".join(_describe(err) for err in shown)) from None
    finally:
        _yaml_file.reset(yaml_token)
        _environ.reset(env_token)
