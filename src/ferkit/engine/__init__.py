"""Engines: training, evaluation and metrics; the only layer that combines models, losses and data."""
