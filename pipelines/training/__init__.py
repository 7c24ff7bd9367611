"""Offline training and evaluation of task heads and fine-tuned encoders (never loaded by the worker)."""
