"""The domain layer: the concept's rules in plain Python (no HTTP, no SQL)."""
