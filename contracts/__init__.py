"""Wire contracts of skinflint: message models and every subject and stream name.

Services import message models from a version module (``contracts.v1``) and names from
``contracts.subjects``; no subject string is written anywhere else.
"""
