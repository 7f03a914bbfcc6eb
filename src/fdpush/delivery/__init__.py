"""Delivery: getting sealed notifications from the outbox to the Push Gateways, nothing lost.

- :mod:`fdpush.delivery.gateway`: the client that talks to one Push Gateway (batches,
  per-item results, what each kind of failure means).
- :mod:`fdpush.delivery.circuit`: per-gateway backoff, so a gateway in trouble is left alone
  for a while and the others keep flowing.
"""
