import io
import json
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.cli import main
from ferkit.config import load_config
from ferkit.data import FER_CLASSES
from ferkit.detect import Face, load_image, register_detector, sample_image_path
from ferkit.detect import faces as faces_module
from ferkit.engine.modelfile import ModelMeta, build_model, load, save
from ferkit.engine.inference import OnnxForward, cached_onnx
from ferkit.engine.predict import FaceResult, Recognizer
from ferkit.engine.sources import FaceTracker, Source, expand_sources, iter_video
from ferkit.errors import FerkitError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small random-weight model in the ferkit format (fp32 so backends can be compared exactly)."""
    cfg = load_config("r18_cbam", {"stem": "imagenet"})
    meta = ModelMeta.from_config(cfg, FER_CLASSES, name="test", temperature=1.5)
    torch.manual_seed(0)
    model = build_model(meta).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the model is not near-uniform
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("model") / "test.safetensors"
    return save(model, meta, path, weights="fp32")


@pytest.fixture(scope="module")
def recognizer(model_file):
    return Recognizer.from_checkpoint(model_file, backend="torch")


def test_sample_photo_one_face_probabilities_sum_to_one(recognizer):
    (result,) = recognizer(sample_image_path())
    assert result.status == "ok" and len(result.faces) == 1
    face = result.faces[0]
    x, y, w, h = face.box
    assert 140 <= x + w / 2 <= 260 and 60 <= y + h / 2 <= 180  # her face, not the suit
    assert sum(face.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(face.probs) == list(FER_CLASSES) and face.top1 in FER_CLASSES
    assert result.top1 == face.top1 and result.top1conf == max(face.probs.values())
    assert json.loads(json.dumps(result.to_dict()))["faces"][0]["label"] == face.top1
    assert result.plot().size == (512, 512)


def test_inputs_of_every_kind_agree(recognizer):
    path = sample_image_path()
    rgb = np.asarray(Image.open(path).convert("RGB"))
    by_path, by_pil, by_rgb, by_bgr = recognizer([path, Image.open(path), rgb, rgb[..., ::-1].copy()],
                                                  bgr=False)[:3] + recognizer(rgb[..., ::-1].copy(), bgr=True)
    for other in (by_pil, by_rgb, by_bgr):
        assert other.faces[0].box == by_path.faces[0].box
        assert other.faces[0].probs == pytest.approx(by_path.faces[0].probs, abs=1e-6)


def test_batch_and_one_by_one_agree(recognizer):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (48, 48), dtype=np.uint8) for _ in range(5)]
    recognizer_nd = Recognizer(recognizer.model, recognizer.meta, detect=False, batch_size=2)
    together = recognizer_nd(crops)
    for crop, batched in zip(crops, together):
        (alone,) = recognizer_nd(crop)
        assert alone.faces[0].probs == pytest.approx(batched.faces[0].probs, abs=1e-5)


def test_temperature_is_applied(recognizer):
    crops = torch.randint(0, 255, (4, 1, 48, 48), dtype=torch.uint8)
    probs = recognizer.classify_crops(crops)
    hot = Recognizer(recognizer.model, recognizer.meta.replace(temperature=1.0)).classify_crops(crops)
    # a temperature above 1 flattens: the top probability drops
    assert (probs.max(1).values < hot.max(1).values).all()
    torch.testing.assert_close(probs.log().diff(dim=1) * 1.5, hot.log().diff(dim=1), atol=1e-4, rtol=1e-4)


def test_onnx_backend_matches_torch(recognizer, model_file):
    onnx = Recognizer.from_checkpoint(model_file)  # auto: onnxruntime is installed
    assert onnx.backend == "onnx"
    crops = torch.randint(0, 255, (9, 1, 48, 48), dtype=torch.uint8)
    torch.testing.assert_close(onnx.classify_crops(crops), recognizer.classify_crops(crops), atol=1e-4, rtol=0)


def test_int8_model_file_is_small_and_close(model_file, tmp_path):
    model, meta = load(model_file)
    small = save(model, meta, tmp_path / "int8.safetensors", weights="int8")
    assert small.stat().st_size < model_file.stat().st_size / 3
    x = torch.randn(4, 1, 48, 48)
    torch.testing.assert_close(load(small)[0](x).softmax(1), model(x).softmax(1), atol=2e-3, rtol=0)


def _write_clip(path, frames, size=(160, 120)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    face = cv2.resize(cv2.imread(str(sample_image_path())), (size[1], size[1]))
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        frame[:, 20 : 20 + size[1]] = face
        writer.write(frame)
    writer.release()


class _CountingRecognizer:
    """Stands in for a Recognizer: records how many frames each call holds."""

    def __init__(self):
        self.largest = 0

    def __call__(self, frames, keep_images=True):
        from ferkit.engine.predict import Result

        self.largest = max(self.largest, len(frames))
        return [Result("frame") for _ in frames]


def test_video_streams_in_bounded_chunks_and_counts_frames(tmp_path):
    clip = tmp_path / "clip.avi"
    _write_clip(clip, 45)
    counting = _CountingRecognizer()
    seen = [i for i, _, _ in iter_video(counting, Source("video", str(clip)), stride=2, chunk=8)]
    assert seen == list(range(0, 45, 2))
    assert counting.largest == 8


def test_video_through_the_real_model_with_smoothing(recognizer, tmp_path):
    clip = tmp_path / "clip.avi"
    _write_clip(clip, 6, size=(320, 240))
    results = [r for _, _, r in iter_video(recognizer, Source("video", str(clip)), smooth=0.5)]
    assert len(results) == 6 and all(len(r.faces) == 1 for r in results)
    # each frame: the video as its source, its index and time (10 fps) as fields of their own
    assert {r.source for r in results} == {str(clip)}
    assert [(r.frame, r.time_s) for r in results] == [(i, pytest.approx(i / 10)) for i in range(6)]
    record = results[-1].to_dict()
    assert (record["frame"], record["time_s"], record["width"], record["height"]) == (5, 0.5, 320, 240)


def test_smoother_by_hand():
    smooth = FaceTracker(keep=0.5)
    first = smooth([FaceResult((0, 0, 10, 10), {"happy": 1.0, "sad": 0.0})])
    second = smooth([FaceResult((1, 1, 10, 10), {"happy": 0.0, "sad": 1.0})])
    far = smooth([FaceResult((50, 50, 10, 10), {"happy": 0.0, "sad": 1.0})])
    assert first[0].probs == {"happy": 1.0, "sad": 0.0}
    assert second[0].probs == {"happy": 0.5, "sad": 0.5}  # same face (IoU 0.68): averaged
    assert far[0].probs == {"happy": 0.0, "sad": 1.0}  # no overlap: a new face
    assert (first[0].track, second[0].track, far[0].track) == (1, 1, 2)


def test_tracks_follow_each_person_when_faces_cross_order():
    track = FaceTracker(patience=1)
    left, right = (0, 0, 20, 20), (100, 0, 20, 20)
    probs = {"happy": 1.0}
    one = track([FaceResult(left, probs), FaceResult(right, probs)])
    # Next frame: listed the other way round and moved a little; each keeps its own number.
    two = track([FaceResult((102, 1, 20, 20), probs), FaceResult((2, 1, 20, 20), probs)])
    assert [f.track for f in one] == [1, 2] and [f.track for f in two] == [2, 1]
    # Two frames without the left face end its track (patience 1); it comes back as a new person.
    track([FaceResult(right, probs)])
    track([FaceResult(right, probs)])
    back = track([FaceResult(left, probs), FaceResult(right, probs)])
    assert [f.track for f in back] == [3, 2]
    assert back[0].to_dict()["track"] == 3


def test_bad_inputs_get_a_status_and_the_run_goes_on(model_file, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = folder / "good.jpg"
    Image.open(sample_image_path()).save(good)
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "blank.png")
    Image.fromarray(np.zeros((700, 700), np.uint8)).save(folder / "huge.png")
    (tmp_path / "empty.mp4").write_bytes(b"")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600 * 600)  # the photo fits, huge.png does not
    code = main(["predict", str(folder), str(tmp_path / "empty.mp4"), "99", "--model", str(model_file),
                 "--format", "jsonl", "--no-progress"])
    assert code == 1  # something failed
    rows = {json.loads(line)["source"].split("/")[-1]: json.loads(line)
            for line in capsys.readouterr().out.splitlines()}
    assert rows["good.jpg"]["status"] == "ok" and len(rows["good.jpg"]["faces"]) == 1
    assert rows["blank.png"]["status"] == "no_face"
    for name in ("notes.txt", "truncated.jpg", "huge.png", "empty.mp4", "99"):
        assert rows[name]["status"] == "error" and rows[name]["error"], name
    assert "pixels" in rows["huge.png"]["error"]


def test_cli_csv_and_save(model_file, tmp_path, capsys):
    assert main(["predict", str(sample_image_path()), "--model", str(model_file), "--format", "csv",
                 "--save", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("source,status,error,frame,time_s,width,height,model,detector,face,track,x,y,w,h,score,label,"
                        "confidence,right_eye_x,right_eye_y,left_eye_x,left_eye_y," + ",".join(FER_CLASSES))
    row = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert len(lines) == 2 and (row["status"], row["error"], row["detector"], row["model"]) == ("ok", "", "blazeface",
                                                                                              "test")
    assert (row["width"], row["height"], row["frame"]) == ("512", "512", "")
    assert len(row["happy"].split(".")[-1]) <= 4 and len(row["right_eye_x"].split(".")[-1]) == 1  # rounded
    assert (tmp_path / "astronaut_ferkit.jpg").is_file()


def test_cli_csv_rows_of_failed_inputs_say_why(model_file, tmp_path, capsys):
    import csv as csv_module

    broken = tmp_path / "broken.jpg"
    broken.write_text("not a picture")
    assert main(["predict", str(broken), str(tmp_path / "absent.jpg"), "--model", str(model_file),
                 "--format", "csv", "--no-progress"]) == 1
    rows = list(csv_module.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "not a readable image" in rows[0]["error"] and "no such file" in rows[1]["error"]


def test_expand_sources(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "clip.MP4").write_bytes(b"")
    kinds = [(s.kind, s.location.split("/")[-1]) for s in expand_sources([str(tmp_path), "0"])]
    assert kinds == [("video", "clip.MP4"), ("image", "x.jpg"), ("webcam", "0")]


def test_quantize_weights_matches_the_int8_file(model_file, tmp_path):
    from ferkit.engine.modelfile import quantize_weights

    model, meta = load(model_file)
    small = save(model, meta, tmp_path / "q.safetensors", weights="int8")
    reloaded, _ = load(small)
    quantize_weights(model)
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-3, atol=1e-4)  # rest is fp16


def test_shipped_model_reads_the_sample_photo_offline():
    recognizer = Recognizer.from_pretrained()
    meta = recognizer.meta
    assert meta.classes == FER_CLASSES and meta.weights == "int8"
    assert 0.5 < meta.info["test_acc"] < 1 and 0.5 < meta.temperature < 3  # scored and calibrated at export
    (result,) = recognizer(sample_image_path())
    assert result.status == "ok" and len(result.faces) == 1
    assert sum(result.faces[0].probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.top1 == "happy"  # the astronaut smiles broadly


def test_detection_on_a_downscaled_copy_maps_boxes_back(recognizer):
    path = sample_image_path()
    # Haar searches a scaled copy (BlazeFace plans its own views, so it would not test the mapping)
    full = Recognizer(recognizer.model, recognizer.meta, detector="haar", detect_size=0)(path)[0].faces[0].box
    small = Recognizer(recognizer.model, recognizer.meta, detector="haar", detect_size=256)(path)[0].faces[0].box
    # the same face in full-image pixels, up to the coarser scale steps of the smaller copy
    centre = lambda b: (b[0] + b[2] / 2, b[1] + b[3] / 2)  # noqa: E731
    assert all(abs(a - b) <= 6 for a, b in zip(centre(full), centre(small)))
    assert abs(small[2] / full[2] - 1) < 0.15


def test_crops_without_detection_give_evaluate_predictions(model_file, tmp_path):
    # With detect=False an input is a face crop already: it reaches the model as it is (no margin),
    # so the API on FER2013-style 48x48 files predicts exactly what `ferkit evaluate` does on them.
    from ferkit.data import FERDataset
    from ferkit.engine.evaluate import evaluate
    from ferkit.engine.inference import predict_logits

    model, meta = load(model_file)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 48, 48), dtype=np.uint8)
    images[:, 10:20, 8:40] = 230  # some structure, so the classes differ between images
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"PrivateTest_{i}.png")
        Image.fromarray(image).save(paths[-1])
    labels = torch.arange(12) % 7
    data = FERDataset(torch.from_numpy(images).unsqueeze(1), labels, FER_CLASSES, "test", "generated")
    report, _ = evaluate(model, data, meta, tta="flip", precision="fp32", channels_last=False)
    recognizer = Recognizer(model, meta, backend="torch", detect=False, tta="flip")
    results = recognizer(paths)
    predicted = torch.tensor([FER_CLASSES.index(r.faces[0].top1) for r in results])
    api_report = type(report).from_predictions(predicted, labels, FER_CLASSES)
    assert api_report.confusion == report.confusion
    # the probabilities too: evaluate's logits of the untouched images, at the model's temperature
    logits = predict_logits(model, data.images, meta, "flip", precision="fp32", channels_last=False)
    got = torch.tensor([[r.faces[0].probs[c] for c in FER_CLASSES] for r in results])
    torch.testing.assert_close(got, torch.softmax(logits / meta.temperature, dim=1), atol=1e-5, rtol=1e-4)


def test_each_result_names_its_detector(recognizer):
    photo = sample_image_path()
    (found,) = recognizer([photo])
    assert found.detector == "blazeface" and found.to_dict()["detector"] == "blazeface"
    assert found.faces[0].eyes is not None and len(found.to_dict()["faces"][0]["eyes"]) == 2
    haar = Recognizer(recognizer.model, recognizer.meta, detector="haar")
    (by_haar,) = haar([photo])
    assert by_haar.detector == "haar" and len(by_haar.faces) == 1
    # Faces given, or detection off: no detector was used, and the output says so.
    (given,) = recognizer([photo], boxes=[[(175, 60, 100, 105)]])
    (crop,) = Recognizer(recognizer.model, recognizer.meta, detect=False)([photo])
    assert given.detector is None and crop.detector is None
    # min_face counts pixels of the photo for both detectors: above her ~95 px face, nothing.
    assert Recognizer(recognizer.model, recognizer.meta, min_face=150)([photo])[0].status == "no_face"
    assert Recognizer(recognizer.model, recognizer.meta, detector="haar", min_face=150)([photo])[0].status == "no_face"


def test_a_batch_gives_each_photo_its_own_faces_and_a_bad_input_costs_only_itself(recognizer):
    photo = sample_image_path()
    alone = recognizer([photo])[0]
    batch = recognizer([photo, b"not an image", str(photo)])
    assert [r.status for r in batch] == ["ok", "error", "ok"]
    assert "<input 1>" in batch[1].error
    for result in (batch[0], batch[2]):
        assert len(result.faces) == 1
        assert np.abs(np.subtract(result.faces[0].box, alone.faces[0].box)).max() <= 1
        assert result.faces[0].top1 == alone.faces[0].top1


def test_workers_search_photos_in_parallel_with_the_same_results_in_order(model_file, monkeypatch):
    photo = load_image(sample_image_path())
    inputs = [photo, b"not an image", cv2.resize(photo, (300, 300)), np.fliplr(photo).copy(), photo[:8, :8]]
    serial = Recognizer.from_checkpoint(model_file, backend="torch", workers=1)(inputs)
    threads = set()
    real = faces_module._DETECTORS["blazeface"]

    def watched(image, min_size):
        threads.add((threading.current_thread().name, faces_module.on_one_core()))
        return real.detect(image, min_size)

    monkeypatch.setitem(faces_module._DETECTORS, "blazeface", faces_module._Registered(watched, True))
    parallel = Recognizer.from_checkpoint(model_file, backend="torch", workers=3)(inputs)
    assert [r.status for r in parallel] == [r.status for r in serial] == ["ok", "error", "ok", "ok", "no_face"]
    for a, b in zip(serial, parallel):
        assert [f.box for f in a.faces] == [f.box for f in b.faces]
        for fa, fb in zip(a.faces, b.faces):
            assert fa.probs == pytest.approx(fb.probs, abs=1e-5)
    # Each photo was searched on a worker thread, on one core; a single photo stays on the caller's thread.
    assert all(name.startswith("ferkit-detect") and one for name, one in threads) and threads
    threads.clear()
    Recognizer.from_checkpoint(model_file, backend="torch", workers=3)([photo])
    assert threads == {(threading.current_thread().name, False)}


def test_onnx_sessions_plan_no_memory_per_batch_size(recognizer):
    # Batch sizes vary with the requests a server gathers: memory planned per input shape, and an arena
    # kept at its largest size, grew a server's memory by ~90 MB before it levelled off.
    forward = OnnxForward(cached_onnx(recognizer.model, recognizer.meta))
    options = forward.session.get_session_options()
    assert not options.enable_mem_pattern and not options.enable_cpu_mem_arena


def test_onnx_batches_are_split_over_the_cores_with_the_same_logits(recognizer, monkeypatch):
    from ferkit.detect import cores

    data = cached_onnx(recognizer.model, recognizer.meta)
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    split, whole = OnnxForward(data), OnnxForward(data, threads=1)
    assert (split.parts, whole.parts) == (2, 1)
    assert split.session.get_session_options().intra_op_num_threads == 1
    assert OnnxForward(data, threads=3).parts == 3
    seen = []
    run = split._run
    monkeypatch.setattr(split, "_run", lambda batch: seen.append((threading.current_thread().name, len(batch)))
                        or run(batch))
    x = torch.randn(5, 1, 48, 48)
    torch.testing.assert_close(split(x), whole(x), atol=1e-5, rtol=0)
    runs = dict((n, name) for name, n in seen)
    assert sorted(runs) == [2, 3] and runs[2] == threading.current_thread().name  # the caller runs the first part
    assert runs[3].startswith("ferkit-cores")
    seen.clear()
    assert split(x[:1]).shape == (1, recognizer.meta.num_classes) and seen[0][1] == 1  # one face: one run
    seen.clear()
    with cores.one_core():
        torch.testing.assert_close(split(x), whole(x), atol=1e-5, rtol=0)
    assert seen == [(threading.current_thread().name, 5)]


def test_workers_must_be_at_least_one(model_file):
    with pytest.raises(FerkitError, match="workers must be a whole number >= 1"):
        Recognizer.from_checkpoint(model_file, backend="torch", workers=0)


def test_only_detectors_that_do_not_scale_themselves_search_a_shrunk_copy(recognizer, monkeypatch):
    monkeypatch.setattr(faces_module, "_DETECTORS", dict(faces_module._DETECTORS))
    seen = {}
    for name, scales_itself in (("fixed", False), ("own", True)):
        def record(image, min_size, name=name):
            seen[name] = (image.shape[:2], min_size)
            return [Face((100, 50, 200, 200), 0.9)]

        register_detector(name, scales_itself=scales_itself)(record)
    photo = np.zeros((400, 800, 3), np.uint8)
    found = {name: Recognizer(recognizer.model, recognizer.meta, detector=name, detect_size=200, min_face=48,
                              backend="torch").find_faces(photo)[0].box for name in ("fixed", "own")}
    # 800 px -> 200 px is a quarter: min_face and the box scale with it, and the box is mapped back
    assert seen == {"fixed": ((100, 200), 12), "own": ((400, 800), 48)}
    assert found == {"fixed": (400, 200, 800, 800), "own": (100, 50, 200, 200)}


def test_a_call_changes_detect_tta_and_min_face_for_itself_only(recognizer, model_file):
    photo = sample_image_path()
    (whole,) = recognizer(photo, detect=False)
    assert [f.box for f in whole.faces] == [(0, 0, 512, 512)] and whole.detector is None
    (found,) = recognizer(photo)
    assert found.faces[0].box != (0, 0, 512, 512) and found.detector == "blazeface"
    (none_found,) = recognizer(photo, min_face=400)  # her face is ~150 px: too small for this call
    assert none_found.status == "no_face"
    (one_view,) = recognizer(photo, tta="none")
    (fresh,) = Recognizer.load(model_file, backend="torch", tta="none")(photo)
    assert one_view.faces[0].probs == pytest.approx(fresh.faces[0].probs, abs=1e-6)
    assert one_view.faces[0].probs != pytest.approx(found.faces[0].probs, abs=1e-6)  # flip TTA by default
    assert (recognizer.detect, recognizer.min_face, recognizer.tta) == (True, 48, "flip")  # nothing stuck
    with pytest.raises(AttributeError):
        recognizer.detect = False  # the options are the recognizer's own: a call says what it wants
    with pytest.raises(FerkitError, match="min_face must be a whole number >= 1"):
        recognizer(photo, min_face=0)


def test_load_takes_a_shipped_name_or_a_model_file_and_checks_options_first(model_file, monkeypatch):
    from ferkit.engine import modelfile

    assert Recognizer.load(model_file, backend="torch").meta.name == "test"
    assert Recognizer.load("wild", backend="torch").meta.name == "wild"
    with pytest.raises(FerkitError, match="no shipped model called 'nope'"):
        Recognizer.load("nope")
    monkeypatch.setattr(modelfile, "load", lambda *a, **k: pytest.fail("read the model before checking options"))
    with pytest.raises(FerkitError, match="detector 'hog'"):
        Recognizer.load(model_file, detector="hog")
    with pytest.raises(TypeError, match="unknown option"):
        Recognizer(None, None, colour=True)


def test_one_options_dataclass_gives_the_defaults_of_api_cli_and_server():
    from ferkit.cli import build_parser
    from ferkit.engine.options import RecognizerOptions
    from ferkit.serve.settings import ServeConfig

    defaults = RecognizerOptions()
    commands = next(a for a in build_parser(["predict", "serve"])._actions if a.dest == "command").choices
    predict = {a.dest: a.default for a in commands["predict"]._actions}
    for name in ("backend", "batch_size", "detector", "min_face", "detect_size"):
        assert predict[name] == getattr(defaults, name), name
    assert predict["tta"] is defaults.tta is None and predict["no_detect"] is (not defaults.detect)
    assert {a.dest: a.default for a in commands["serve"]._actions}["backend"] == ServeConfig().backend
    assert ServeConfig().backend == defaults.backend


def test_annotated_video_frames_name_each_persons_track():
    probs = {"happy": 0.75, "sad": 0.25}
    assert FaceResult((0, 0, 9, 9), probs, track=3).caption == "#3 happy 75%"
    assert FaceResult((0, 0, 9, 9), probs).caption == "happy 75%"  # a still photo has no track


def test_the_api_answers_to_the_schemas_names_too():
    face = FaceResult((1, 2, 3, 4), {"happy": 0.75, "sad": 0.25})
    record = face.to_dict()
    assert (face.label, face.confidence) == (face.top1, face.top1conf) == (record["label"], record["confidence"])


def test_a_gpu_runs_onnxruntime_where_its_cuda_provider_is_installed_else_torch(monkeypatch):
    import onnxruntime

    from ferkit.engine.inference import onnx_providers
    from ferkit.engine.predict import resolve_backend

    assert resolve_backend("auto", "cpu") == "onnx" and resolve_backend("auto", "cpu", int8=True) == "onnx-int8"
    assert resolve_backend("auto", "cuda") == "torch" and onnx_providers("cuda") == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # onnxruntime-gpu installed
    assert resolve_backend("auto", "cuda:0") == "onnx"
    assert onnx_providers("cuda:0") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"] and resolve_backend("auto", "mps") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"  # a backend asked for by name is kept
