"""Tests of delivery to the Push Gateways: the gateway client, the per-gateway circuit."""
