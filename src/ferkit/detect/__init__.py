"""Offline face detection and cropping; the detector models ship inside the installed packages."""
from ferkit.detect.crop import crop_face
from ferkit.detect.faces import Face, detect_faces, detector_scales_itself, list_detectors, register_detector
from ferkit.detect.image import load_image, sample_image_path

__all__ = ["Face", "crop_face", "detect_faces", "detector_scales_itself", "list_detectors", "load_image",
           "register_detector", "sample_image_path"]
