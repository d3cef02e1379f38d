"""Operator tools: what a person running the gateway uses to look at it and repair it.

- :mod:`~capirelay.ops.doctor` (and :mod:`~capirelay.ops.doctor_meta`): checks
  returning ``Check(name, status, detail, fix)``, for ``capirelay doctor``.
- :mod:`~capirelay.ops.health`: token, Graph version, clock skew.
- :mod:`~capirelay.ops.preflight`: settings that load but quietly change or stop
  delivery (a test_event_code left on, an unset webhook secret), shown by the
  doctor and logged by ``serve`` when it starts.
- :mod:`~capirelay.ops.quality`: predicted match quality and hints.
- :mod:`~capirelay.ops.dlq`: list, show, replay, purge the dead-letter queue.
- :mod:`~capirelay.ops.trace`: an event's whole story from its receipts.
- Meta's side: :mod:`~capirelay.ops.diagnostics` (the scheduled pixel
  diagnostics job), :mod:`~capirelay.ops.reconcile` (our counts against
  Meta's), :mod:`~capirelay.ops.meta_store` (where their snapshots are kept),
  :mod:`~capirelay.ops.meta_advice` (what to do about what Meta reports).

The command line (:mod:`capirelay.cli`) and the dashboard call these; the
gateway's hot path (ingest, outbox, delivery) does not depend on them, except
the diagnostics job the server schedules and the start-up warnings of
:mod:`~capirelay.ops.preflight`.
"""
