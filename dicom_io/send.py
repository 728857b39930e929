"""C-STORE SCU: send DICOM files to a peer over one association."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context

__all__ = ["SendError", "send_files", "sop_class_uid"]


class SendError(RuntimeError):
    """The peer could not be reached or did not confirm every instance."""


def sop_class_uid(path: Path) -> str:
    """The SOP Class UID of a DICOM file (its header only).

    Raises
    ------
    ValueError
        If ``path`` is not a readable DICOM file.
    """
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)
    except (pydicom.errors.InvalidDicomError, OSError, AttributeError) as e:
        raise ValueError(f"'{path.name}' is not a readable DICOM file: {e}") from e


def send_files(
    paths: Sequence[Path], ae_title: str, host: str, port: int, calling_ae_title: str = "SPINEGATE",
    timeout_s: float = 30.0, tls_args: tuple[Any, str] | None = None,
) -> list[str]:
    """Send ``paths`` and return the SOP Instance UIDs the peer confirmed.

    ``tls_args`` — an `ssl.SSLContext` and the server name its certificate
    must carry — sends over DICOM TLS.

    Raises
    ------
    SendError
        If the association is refused or aborted, or any C-STORE status is
        not success (0x0000) or warning (0xB000-0xB00F).
    """
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts = {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}
    ae.requested_contexts = [build_context(c, [ts]) for c, ts in sorted(contexts)]
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        raise SendError(f"association with {ae_title}@{host}:{port} was not established"
                        + (" (TLS)" if tls_args else ""))
    confirmed = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"no response from {ae_title} for {ds.SOPInstanceUID}")
            if code != 0x0000 and not (0xB000 <= code <= 0xB00F):
                raise SendError(f"{ae_title} answered 0x{code:04X} for {ds.SOPInstanceUID}")
            confirmed.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()
    return confirmed
