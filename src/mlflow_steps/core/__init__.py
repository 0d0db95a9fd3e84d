"""Shared ground: errors, the retry policy, redaction, terminal output, interrupts,
bounded reads, the cache, step outputs, the YAML loader and the MLflow adapter."""
