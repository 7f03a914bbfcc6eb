"""Storage: schema, migrations and queries; SQLite and PostgreSQL behind one interface."""

from fdpush.storage.database import Database

__all__ = ["Database"]
