"""The floor under any durable receiver built on pynetdicom, for `bench/ingest.py`.

spinegate's own application entity and transport (`service.scp.build_ae`,
`service.transport`), with a C-STORE handler that does nothing but what
makes the success status durable: the received bytes, as pynetdicom hands
them over, written with `service.spool.durable_write` (temporary file,
fsync, rename, folder fsync) under the request's SOP Instance UID. No
parsing, no checks, no index, no queue, no metrics. What spinegate spends
beyond this floor is its own; what the floor spends against Orthanc is
pynetdicom's and the disk's. ``--check`` adds spinegate's parsing and
checks of the instance (`dicom_io.study.parse_instance`,
`dicom_io.validate.check_received_instance`), ``--index`` its SQLite index
as well (`service.store.StateStore`: the duplicate look-up, then the
record committed after the write), to show what each step costs.

    python bench/pynetdicom_floor.py --port 11112 --folder DIR [--processes N] [--check [--index]]

With ``--processes`` N > 1, N processes share the port (SO_REUSEPORT, as
``network.receiver_processes`` does). Runs until terminated.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pynetdicom import evt  # noqa: E402

from spinegate.dicom_io.study import parse_instance  # noqa: E402
from spinegate.dicom_io.validate import check_received_instance  # noqa: E402
from spinegate.service.config import load_config  # noqa: E402
from spinegate.service.scp import Status, build_ae, configure_pynetdicom  # noqa: E402
from spinegate.service.spool import durable_write  # noqa: E402
from spinegate.service.store import InstanceRecord, StateStore  # noqa: E402
from spinegate.service.transport import AssociationServer, SharedPortServer  # noqa: E402


def serve(port: int, folder: Path, shared: bool, check: bool = False, index: bool = False) -> None:
    """Listen on 127.0.0.1:``port`` and store every instance durably, until SIGTERM."""
    configure_pynetdicom()
    ae = build_ae(load_config(None, environ={}))
    ae.require_called_aet = False
    store = StateStore(folder / f"index-{os.getpid()}.db") if index else None

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        data = event.encoded_dataset(include_meta=True)
        if check or store is not None:
            ds = parse_instance(data)
            check_received_instance(ds, event.context.transfer_syntax)
        if store is not None:
            store.has_instance(uid)
        path = durable_write(folder / f"{uid}.dcm", data)
        if store is not None:
            store.record_instance(InstanceRecord(uid, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, path))
        return Status.SUCCESS

    server = ae.make_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)],
                            server_class=SharedPortServer if shared else AssociationServer)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="parse and check each instance as spinegate does")
    ap.add_argument("--index", action="store_true", help="and record it in spinegate's SQLite index")
    args = ap.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    shared = args.processes > 1
    spawn = multiprocessing.get_context("spawn")
    others = [spawn.Process(target=serve, args=(args.port, args.folder, True, args.check, args.index), daemon=True)
              for _ in range(args.processes - 1)]
    for p in others:
        p.start()
    try:
        serve(args.port, args.folder, shared, args.check, args.index)
    finally:
        for p in others:
            p.terminate()
            p.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
