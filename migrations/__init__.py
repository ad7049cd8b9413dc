"""Alembic migrations; installed as ``etl._migrations`` (see setup.py)."""
