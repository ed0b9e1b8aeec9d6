"""Accounting: prices every usage event and keeps the ledger that proves the savings."""
