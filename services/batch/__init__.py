"""Batch jobs: OpenAI Batch input files, output and error lines, and the job's state machine."""
