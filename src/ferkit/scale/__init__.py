"""Scale-out: the same prediction on a Ray cluster (``ferkit predict --engine ray``, :func:`predict_dataset`).

Importing this package loads neither Ray nor torch; Ray is an optional extra (``pip install "ferkit[ray]"``).
"""
from ferkit.scale.ray_engine import RunCounts, predict_dataset, predict_to_folder

__all__ = ["RunCounts", "predict_dataset", "predict_to_folder"]
