"""Revisions, one file each (``<rev>_<slug>.py``); Alembic reads them, nothing imports them."""
