"""Data sets in one in-memory form, whatever format they were read from."""
from ferkit.data.cache import default_cache_dir
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.data.fer2013 import load_dataset, load_fer2013

__all__ = [
    "FER_CLASSES",
    "SPLITS",
    "FERDataset",
    "default_cache_dir",
    "load_dataset",
    "load_fer2013",
    "stratified_split",
]
