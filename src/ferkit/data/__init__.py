"""Data sets in one in-memory form, whatever format they were read from."""
import importlib
import pkgutil

from ferkit.data.cache import default_cache_dir
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.data.folds import stratified_folds, subject_folds, subject_split
from ferkit.data.names import FER8_CLASSES
from ferkit.data.readers import DataFormat, data_formats, describe_formats, load_dataset, register_reader

# Importing a reader module registers its format. Any import of ferkit.data.<module> runs this file
# first, so every format is registered before load_dataset can be called; data_formats() lists them
# in this order.
from ferkit.data.fer2013 import load_fer2013
from ferkit.data.ferplus import load_ferplus
from ferkit.data.ckplus import load_ckplus, load_ckplus48
from ferkit.data.rafdb import load_rafdb
from ferkit.data.photos import PhotoDataset, load_photos

__all__ = [
    "DataFormat",
    "data_formats",
    "describe_formats",
    "register_reader",
    "FER8_CLASSES",
    "FER_CLASSES",
    "SPLITS",
    "FERDataset",
    "PhotoDataset",
    "default_cache_dir",
    "load_ckplus",
    "load_ckplus48",
    "load_dataset",
    "load_fer2013",
    "load_ferplus",
    "load_photos",
    "load_rafdb",
    "stratified_folds",
    "stratified_split",
    "subject_folds",
    "subject_split",
]

# Then every other module of the package, so a new reader is one new file: it registers its format when
# imported, after the shipped ones above.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
