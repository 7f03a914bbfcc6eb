"""Delivery: getting sealed notifications from the outbox to the Push Gateways, nothing lost.

- :mod:`fdpush.delivery.gateway`: the client that talks to one Push Gateway (batches,
  per-item results, what each kind of failure means).
- :mod:`fdpush.delivery.circuit`: per-gateway backoff, so a gateway in trouble is left alone
  for a while and the others keep flowing.
"""

# The gauge each worker process sets when it looks for work; the supervisor of ``fdpush worker``
# reads it for readiness. Here, so that the supervisor need not import the worker's modules.
PROGRESS_METRIC = "fdpush_worker_last_progress_timestamp_seconds"
# And the gauge each sets whenever the database answered it (at least every few seconds): the
# supervisor's readiness asks its processes about the database instead of connecting itself.
DATABASE_METRIC = "fdpush_worker_last_database_answer_timestamp_seconds"
