"""Ingress: OpenAI-compatible HTTP (JSON and SSE) and WebSocket in front of the stages."""
