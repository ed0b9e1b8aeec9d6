"""Inference worker: one model, one device, continuous batching; interactive before bulk."""
