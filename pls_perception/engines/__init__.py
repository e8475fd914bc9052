"""Inference engines: torch (eager reference) and onnxruntime."""
