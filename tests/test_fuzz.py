"""Fuzzing (hypothesis): image decoding and the Recognizer on random bytes and arrays, CSV rows of predict.

A longer run of the same properties: ``python benchmarks/fuzz.py``.
"""
import csv
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ferkit.config import load_config
from ferkit.data import FER_CLASSES
from ferkit.detect.image import decode_image, to_rgb_array
from ferkit.engine.modelfile import ModelMeta, build_model
from ferkit.engine.predict import FaceResult, Recognizer, Result
from ferkit.engine.sources import ResultWriter
from ferkit.errors import FerkitError

# 40 examples a property in the suite; benchmarks/fuzz.py sets FERKIT_FUZZ=long for thousands.
for _name, _examples in (("ci", 40), ("long", 3000)):
    settings.register_profile(_name, max_examples=_examples, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("FERKIT_FUZZ", "ci"))


@pytest.fixture(scope="module")
def recognizer():
    cfg = load_config("r18", {"stem": "imagenet", "input_size": 32})
    meta = ModelMeta.from_config(cfg, FER_CLASSES)
    torch.manual_seed(0)
    return Recognizer(build_model(meta).eval(), meta, backend="torch", tta="none")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@given(st.binary(max_size=2000))
def test_random_bytes_decode_or_raise_ferkit_error(data):
    try:
        image = decode_image(data)
    except FerkitError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@given(st.binary(min_size=1, max_size=400), st.integers(0, 600))
def test_damaged_png_decodes_or_raises_ferkit_error(noise, cut):
    data = bytearray(_png(np.arange(24 * 24, dtype=np.uint8).reshape(24, 24)))
    data[cut % len(data): cut % len(data) + len(noise)] = noise
    try:
        image = decode_image(bytes(data))
    except FerkitError as err:
        assert "\n" not in str(err) and str(err).startswith("<bytes>: ")
        return
    # What still decodes is the 24 x 24 picture, as the header says, in ferkit's RGB form.
    assert image.dtype == np.uint8 and image.shape == (24, 24, 3)


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
    shape=st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
                    st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 5]))),
)


@given(ARRAYS)
def test_any_array_is_normalised_or_refused(array):
    try:
        image = to_rgb_array(array)
    except FerkitError:
        assert array.size == 0 or array.ndim == 3 and array.shape[2] not in (1, 3, 4)
        return
    assert image.dtype == np.uint8 and image.shape[:2] == array.shape[:2]


@given(st.lists(st.one_of(ARRAYS, st.binary(max_size=300)), min_size=1, max_size=4))
def test_recognizer_answers_every_input(recognizer, items):
    items = [items[0], _png(np.full((40, 40), 128, np.uint8)), *items[1:]]
    results = recognizer(items)
    assert len(results) == len(items)
    assert results[1].status == "no_face"
    for result in results:
        assert result.status in ("ok", "no_face", "error")
        assert (result.error is not None) == (result.status == "error")
        for face in result.faces:
            assert sum(face.probs.values()) == pytest.approx(1.0, abs=1e-4)


@given(st.text(min_size=1, max_size=30), st.text(max_size=30))
def test_csv_rows_round_trip_any_source_name(name, reason):
    # predict's CSV quotes what needs it: a name or an error with commas, quotes or newlines stays one field
    buffer = io.StringIO()
    writer = ResultWriter(buffer, "csv", list(FER_CLASSES))
    probs = dict(zip(FER_CLASSES, [0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0]))
    writer.write(Result(name, faces=[FaceResult((0, 0, 10, 10), probs)], detector="blazeface"))
    writer.write(Result(name, status="error", error=reason or "x"))
    header, face, failed = list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))
    assert len(face) == len(header) == len(failed)
    face, failed = dict(zip(header, face)), dict(zip(header, failed))
    assert face["source"] == name and face["label"] == "happy" and face["happy"] == "0.9"
    assert failed["source"] == name and failed["status"] == "error" and failed["error"] == (reason or "x")


GOOD_META = {**ModelMeta.from_config(load_config("r18", {"stem": "imagenet"}), FER_CLASSES).to_dict(), "temperature": 1.2}
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=8),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@given(st.dictionaries(st.sampled_from(sorted(GOOD_META) + ["class_bias", "crop_margin", "tta"]), VALUES,
                       max_size=4))
def test_model_metadata_is_accepted_or_refused_in_one_error(changes):
    from ferkit.engine.modelfile import check_meta

    meta = {**GOOD_META, **changes}
    try:
        checked = check_meta(meta, "fuzz.safetensors")
    except FerkitError as e:
        assert str(e).startswith("fuzz.safetensors") and "\n" not in str(e)
        return
    assert len(checked["classes"]) == checked["num_classes"] <= 1000


@given(st.dictionaries(st.sampled_from(["lr", "batch_size", "epochs", "device", "model", "stem", "smooth",
                                        "label_smoothing", "input_size", "erase", "scale", "warmup_epochs"]),
                       VALUES, max_size=3))
def test_config_values_are_accepted_or_refused_in_one_error(overrides):
    try:
        cfg = load_config(None, overrides)
    except FerkitError as e:
        assert "\n" not in str(e)
        return
    assert cfg.lr > 0 and cfg.batch_size >= 1 and cfg.epochs >= 1
