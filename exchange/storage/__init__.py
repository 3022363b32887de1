"""Storage: the SQLAlchemy store (SQLite or PostgreSQL), its schema and Alembic migrations,
and the hash-chained audit log kept in the same database.

May import: ``exchange.policy`` (marking tables) and the top-level leaves. Never the node,
the sharing flow, the CLI or the demo.
"""
