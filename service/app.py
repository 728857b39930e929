"""The long-running service: SCP + queue consumer, with a clean lifecycle.

``run(config)`` starts the SCP (non-blocking), re-queues interrupted work,
loads the model, then runs the Huey consumer in the main thread: SIGINT
drains the running job, SIGTERM stops at once (the job is re-queued at the
next start). The SCP is shut down on the way out.
"""
from __future__ import annotations

import json
import logging

from service.config import SpinegateConfig
from service.scp import Receiver, start_scp
from service.store import StateStore
from service.worker import StudyWorker, build_queue

__all__ = ["run", "build_worker"]

log = logging.getLogger(__name__)


def build_worker(config: SpinegateConfig) -> tuple[StateStore, StudyWorker]:
    store = StateStore(config.storage.state_db)
    return store, StudyWorker(config, store, build_queue(config))


def run(config: SpinegateConfig) -> int:
    log.info("effective configuration %s", json.dumps(config.redacted(), sort_keys=True))
    store, worker = build_worker(config)
    _ = worker.engine  # load the model before accepting work
    receiver = Receiver(config, store, worker.on_instance_stored)
    server = start_scp(config, receiver)
    try:
        worker.recover()
        consumer = worker.huey.create_consumer(workers=1, worker_type="thread", periodic=False,
                                               initial_delay=0.05, max_delay=0.5, backoff=1.3,
                                               check_worker_health=False)
        consumer.run()
    finally:
        server.shutdown()
        store.close()
        log.info("stopped")
    return 0
