"""The ledger's Alembic environment (``env.py``) and revisions (``versions/``); run by
``services.accounting.migrate``."""
