"""Tests of the client kit (fdpush.client)."""
