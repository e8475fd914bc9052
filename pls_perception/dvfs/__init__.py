"""DVFS backends: one small interface, one module per backend."""
