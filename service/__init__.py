"""The running system: SCP, spool, study assembly, routing, queue, pipeline,
export, configuration and CLI."""
