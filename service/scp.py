"""The DICOM SCP: C-ECHO and C-STORE for MR images.

Handlers are thin: decode, check, write durably, record, return a status.
No image work runs inside an association (the SCU waits under its DIMSE
timeout). The one broad catch is `_status_for`, mapping failures to DIMSE
statuses through one table.
"""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from spinegate.dicom_io.study import parse_instance
from spinegate.dicom_io.uids import ACCEPTED_TRANSFER_SYNTAXES, MR_STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS
from spinegate.dicom_io.validate import InstanceProblem, check_received_instance
from spinegate.service.access import AccessPolicy
from spinegate.service.config import SpinegateConfig
from spinegate.service.metrics import Metrics
from spinegate.service.spool import durable_write, quarantine_write, spool_path
from spinegate.service.store import InstanceRecord, StateStore
from spinegate.service.transport import AssociationServer, SharedPortServer

__all__ = ["Status", "Receiver", "build_ae", "configure_pynetdicom", "start_scp"]

log = logging.getLogger(__name__)


class Status:
    """C-STORE statuses spinegate returns (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


_STATUS_BY_REASON = {
    "missing_attribute": Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "unsupported_sop_class": Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "wrong_modality": Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "missing_pixel_data": Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "truncated_pixel_data": Status.CANNOT_UNDERSTAND,
    "pixel_data_size_mismatch": Status.CANNOT_UNDERSTAND,
    "empty_image": Status.CANNOT_UNDERSTAND,
    "unsupported_bits_allocated": Status.CANNOT_UNDERSTAND,
    "malformed_geometry": Status.CANNOT_UNDERSTAND,
    "pixel_data_does_not_match_transfer_syntax": Status.CANNOT_UNDERSTAND,
    "malformed_element": Status.CANNOT_UNDERSTAND,
    "undecodable_dataset": Status.CANNOT_UNDERSTAND,
    "invalid_uid": Status.CANNOT_UNDERSTAND,
}


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings: never log identifiers (PHI)."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"


@dataclass
class Receiver:
    """Admits callers by the access policy and stores received instances;
    ``on_stored(study_uid)`` fires after each newly stored instance."""

    config: SpinegateConfig
    store: StateStore
    on_stored: Callable[[str], None]
    metrics: Metrics | Any | None = None  # Metrics, or a MetricsRelay in a receiver process
    access: AccessPolicy = field(init=False)
    _low_disk: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.access = AccessPolicy.build(self.config.network.allowed_calling_ae_titles,
                                         self.config.network.allowed_hosts)
        self.config.storage.root.mkdir(parents=True, exist_ok=True)  # measured by _room_for

    def handle_requested(self, event: Event) -> None:
        """Reject a caller the policy does not admit, before negotiation
        (pynetdicom then skips it): A-ASSOCIATE-RJ with the reason code."""
        request = event.assoc.requestor.primitive
        calling = str(request.calling_ae_title if request is not None else "").strip()
        address = str(event.assoc.requestor.address)
        refusal = self.access.refusal(calling, address)
        if refusal is None:
            return
        log.warning("association rejected reason=%s calling_ae_title=%s peer=%s", refusal.value, calling, address)
        if self.metrics:
            self.metrics.associations.labels("rejected", refusal.value).inc()
        event.assoc.acse.send_reject(*refusal.reject_codes)
        # As pynetdicom does after its own rejections: stopping the DUL lets
        # it send the A-ASSOCIATE-RJ before the connection is closed.
        event.assoc.kill()

    def handle_store(self, event: Event) -> int:
        data = event.encoded_dataset(include_meta=True)
        status, outcome = self._store(event, data)
        if self.metrics:
            self.metrics.received_bytes.inc(len(data))
            self.metrics.instances.labels(str(event.context.abstract_syntax), str(event.context.transfer_syntax),
                                          outcome).inc()
        return status

    def handle_accepted(self, event: Event) -> None:
        if self.metrics:
            self.metrics.associations.labels("accepted", "").inc()

    def handle_rejected(self, event: Event) -> None:
        if self.metrics:
            # The A-ASSOCIATE-RJ primitive names the reason (e.g. "Local limit exceeded").
            primitive = getattr(event.assoc.acceptor, "primitive", None)
            reason = getattr(primitive, "reason_str", "") if primitive is not None else ""
            self.metrics.associations.labels("rejected", str(reason or "unspecified")).inc()

    def _store(self, event: Event, data: bytes) -> tuple[int, str]:
        ts = event.context.transfer_syntax
        peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        if not self._room_for(len(data)):
            return Status.OUT_OF_RESOURCES, "out_of_resources"
        try:
            ds = parse_instance(data)
            check_received_instance(ds, ts)
            path = spool_path(self.config.storage.spool, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        except InstanceProblem as e:
            return self._refuse(data, e.reason, str(e), peer), "refused"
        except ValueError as e:
            return self._refuse(data, "invalid_uid", str(e), peer), "refused"
        except Exception as e:  # pydicom raises many types for malformed input
            # pydicom's text may quote element values (a patient's name): it
            # goes to the quarantine sidecar beside the data, the log gets the type.
            return self._refuse(data, "undecodable_dataset", f"{type(e).__name__}: {e}", peer,
                                logged=type(e).__name__), "refused"
        if self.store.has_instance(ds.SOPInstanceUID):
            log.info("duplicate instance acknowledged sop_instance_uid=%s peer=%s", ds.SOPInstanceUID, peer)
            # A re-send may follow a failed scheduling of the study's check:
            # make sure one is pending (once per study, see on_stored).
            return self._notify(ds.StudyInstanceUID, "duplicate")
        try:
            durable_write(path, data)
        except OSError as e:
            log.error("cannot store instance sop_instance_uid=%s: %s", ds.SOPInstanceUID, e)
            return Status.OUT_OF_RESOURCES, "out_of_resources"
        rec = InstanceRecord(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, path)
        if self.store.record_instance(rec):
            log.debug("stored sop_instance_uid=%s series_uid=%s", ds.SOPInstanceUID, ds.SeriesInstanceUID)
            return self._notify(ds.StudyInstanceUID, "stored")
        return Status.SUCCESS, "duplicate"

    def _room_for(self, n_bytes: int) -> bool:
        """Whether writing ``n_bytes`` keeps ``storage.min_free_bytes`` free
        (back-pressure: the sender keeps the instance and retries later).
        Logged once when the volume fills up and once when it has room again."""
        free = shutil.disk_usage(self.config.storage.root).free
        room = free - n_bytes >= self.config.storage.min_free_bytes
        if room == self._low_disk:
            self._low_disk = not room
            if room:
                log.warning("storage has room again free_bytes=%d: accepting instances", free)
            else:
                log.warning("storage below storage.min_free_bytes free_bytes=%d min_free_bytes=%d: "
                            "answering C-STOREs 0xA700 until there is room", free, self.config.storage.min_free_bytes)
        return room

    def _notify(self, study_uid: str, outcome: str) -> tuple[int, str]:
        """Tell the worker; if its queue fails, answer 0xA700 so that the
        sender retries (the instance is kept; the retry is a duplicate that
        notifies again)."""
        try:
            self.on_stored(study_uid)
        except Exception as e:  # any queue backend error
            log.error("cannot queue the study check study_uid=%s: %s", study_uid, type(e).__name__)
            return Status.OUT_OF_RESOURCES, "queue_unavailable"
        return Status.SUCCESS, outcome

    def _refuse(self, data: bytes, reason: str, message: str, peer: str, logged: str | None = None) -> int:
        try:
            path = quarantine_write(self.config.storage.quarantine, data, reason, {"message": message, "peer": peer})
            self.store.quarantine(path, reason)
        except OSError as e:
            log.error("cannot quarantine refused instance (%s): %s", reason, e)
            return Status.OUT_OF_RESOURCES
        if self.metrics:
            self.metrics.quarantined.labels(reason).inc()
        log.warning("refused instance reason=%s peer=%s quarantined=%s: %s", reason, peer, path.name,
                    message if logged is None else logged)
        return _STATUS_BY_REASON.get(reason, Status.CANNOT_UNDERSTAND)


def build_ae(config: SpinegateConfig) -> AE:
    """The application entity with MR storage and verification contexts."""
    ae = AE(ae_title=config.network.ae_title)
    ae.acse_timeout = config.network.acse_timeout_s
    ae.dimse_timeout = config.network.dimse_timeout_s
    ae.network_timeout = config.network.network_timeout_s
    ae.maximum_associations = config.network.maximum_associations
    ae.maximum_pdu_size = config.network.maximum_pdu_bytes
    # An association addressed to another AE title is a misrouted sender:
    # reject it (A-ASSOCIATE-RJ, called AE title not recognised).
    ae.require_called_aet = True
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for sop_class in MR_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def start_scp(config: SpinegateConfig, receiver: Receiver) -> ThreadedAssociationServer:
    """Start listening (non-blocking); returns the server (call ``shutdown()``).

    With ``network.receiver_processes`` > 1 the port is opened shared, so
    the other receiver processes (`service.receivers`) can listen on it too.
    """
    configure_pynetdicom()
    ae = build_ae(config)
    handlers: list[Any] = [(evt.EVT_REQUESTED, receiver.handle_requested), (evt.EVT_C_STORE, receiver.handle_store),
                           (evt.EVT_ACCEPTED, receiver.handle_accepted), (evt.EVT_REJECTED, receiver.handle_rejected)]
    address = (config.network.host, config.network.port)
    server_class = SharedPortServer if config.network.receiver_processes > 1 else AssociationServer
    server = ae.make_server(address, evt_handlers=handlers, server_class=server_class,
                            ssl_context=config.network.tls.context())
    # As AE.start_server does: the AE tracks its servers (shutdown() removes it).
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True).start()
    log.info("listening ae_title=%s host=%s port=%d shared=%s tls=%s client_certificate=%s", config.network.ae_title,
             config.network.host, config.network.port, config.network.receiver_processes > 1,
             config.network.tls.enabled, "required" if config.network.tls.require_client_certificate else "no")
    return server
