"""Tests of the development Push Gateway (``fdpush gateway``)."""
