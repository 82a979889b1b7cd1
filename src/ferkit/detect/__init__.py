"""Offline face detection and cropping; the detector models ship inside the installed packages."""
import importlib
import pkgutil

from ferkit.detect.crop import crop_face
from ferkit.detect.faces import (DEFAULT_DETECTOR, Face, describe_detectors, detect_faces, detector_scales_itself,
                                 list_detectors, register_detector)
from ferkit.detect.image import load_image, sample_image_path

__all__ = ["DEFAULT_DETECTOR", "Face", "crop_face", "describe_detectors", "detect_faces", "detector_scales_itself",
           "list_detectors", "load_image", "register_detector", "sample_image_path"]

# Every module of this package is imported, and a backend module registers its detectors when it is, so a
# new detector is one new file. Whichever ferkit.detect module a caller imports first, this file runs before it.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
