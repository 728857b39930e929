"""The value types spinegate's configuration sections are built from
(`spinegate.service.config`): the coded choices as enums, the checked
field types (AE title, port, seconds, a readable file), case-insensitive
parsing of routing values, the frozen base of every section, and the TLS
settings a listener and a destination carry."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = ["AETitle", "AxialPrecision", "DestinationTLS", "EngineName", "InferenceBackend", "NetworkTLS", "OutputKind",
           "Port", "QueueBackend", "ReadableFile", "Seconds", "Section", "enum_member"]


class EngineName(str, enum.Enum):
    """The engines a routing rule can send a series to."""

    SAGITTAL_SPINE = "sagittal_spine"
    AXIAL_MUSCLE = "axial_muscle"


class AxialPrecision(str, enum.Enum):
    """The axial model ONNX Runtime runs on CPU."""

    INT8 = "int8"  # quantised (`inference.training.quantize`), ~1.6x faster, its own area calibration
    FP32 = "fp32"  # the trained model itself


class InferenceBackend(str, enum.Enum):
    """Where the networks run (`spinegate.inference.backends`)."""

    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime on the CPU
    AUTO = "auto"  # ONNX Runtime's CUDA provider, else PyTorch CUDA, else the CPU (logged)
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"  # a GPU or a start-up error, never a silent CPU
    TORCH_CUDA = "torch-cuda"


class OutputKind(str, enum.Enum):
    """The kinds of object spinegate writes for a study."""

    SEG = "seg"
    SR = "sr"
    KEY_IMAGES = "key_images"
    PDF_REPORT = "pdf_report"
    PARAMETRIC_MAP = "parametric_map"


class QueueBackend(str, enum.Enum):
    SQLITE = "sqlite"  # embedded, one process
    REDIS = "redis"  # scale-out: receivers and 'spinegate worker' processes share it


def _application_entity(title: str) -> str:
    # PS3.5 AE VR: up to 16 characters, no backslash or control characters,
    # not only spaces.
    if not title.strip():
        raise ValueError("must not be empty")
    if "\\" in title or any(ord(c) < 32 or ord(c) > 126 for c in title):
        raise ValueError("must be printable ASCII without a backslash")
    return title


AETitle = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(_application_entity)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


def enum_member(enum_type: type[enum.Enum]) -> Any:
    """Parse a routing value case-insensitively ('Sagittal', 'WATER'), so a
    capitalised plane is read, not silently matched against nothing."""

    def parse(value: Any) -> Any:
        if isinstance(value, enum_type):
            return value
        by_value = {str(m.value).lower(): m for m in enum_type}
        member = by_value.get(str(value).lower())
        if member is None:
            raise ValueError(f"{value!r} is not one of {', '.join(str(m.value) for m in enum_type)}")
        return member

    return BeforeValidator(parse)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


ReadableFile = Annotated[Path, AfterValidator(lambda p: p if p.is_file() else _missing(p))]


def _missing(path: Path) -> Path:
    raise ValueError(f"{path} is not a readable file")


class NetworkTLS(Section):
    """DICOM TLS on the SCP: on when ``certificate`` is set (PEM files)."""

    certificate: ReadableFile | None = None
    private_key: ReadableFile | None = None
    ca_certificates: ReadableFile | None = None  # authorities whose client certificates are trusted
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _complete(self) -> NetworkTLS:
        if self.certificate is None:
            if self.private_key or self.ca_certificates or self.require_client_certificate:
                raise ValueError("TLS settings need 'certificate' (and 'private_key') to turn TLS on")
            return self
        if self.private_key is None:
            raise ValueError("'certificate' needs its 'private_key'")
        self.context()  # loads the files: a bad one fails at start-up, naming this section
        return self

    @property
    def enabled(self) -> bool:
        return self.certificate is not None

    def context(self) -> Any:
        """The SCP's `ssl.SSLContext` (None without TLS)."""
        if self.certificate is None:
            return None
        from spinegate.service.transport import server_context

        assert self.private_key is not None  # checked with the certificate
        return server_context(self.certificate, self.private_key, self.ca_certificates,
                              self.require_client_certificate)


class DestinationTLS(Section):
    """DICOM TLS to one destination: its certificate is verified against
    ``ca_certificates`` (else the system's authorities) and, unless
    ``check_hostname`` is off, must name ``server_name`` (default: the
    destination's host); ``certificate``/``private_key`` are ours, for a
    destination that requires client certificates."""

    ca_certificates: ReadableFile | None = None
    certificate: ReadableFile | None = None
    private_key: ReadableFile | None = None
    server_name: str | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _complete(self) -> DestinationTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("'certificate' and 'private_key' go together")
        self.context()
        return self

    def context(self) -> Any:
        from spinegate.service.transport import client_context

        return client_context(self.ca_certificates, self.certificate, self.private_key, self.check_hostname)
