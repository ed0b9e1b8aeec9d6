"""Classifier stage (issue 13): which tier answers a request. The learned policy's data set,
features, model and evaluation live here as plain logic (``dataset``, ``features``, ``learned``,
``baselines``, ``metrics``, ``evaluate``)."""
