"""Every input of predict (API and CLI) in its own error boundary; images of any kind normalised; outputs safe."""
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.cli import main
from ferkit.config import load_config
from ferkit.data import FER_CLASSES
from ferkit.detect import sample_image_path
from ferkit.detect.image import decode_image, load_image, pil_to_array, to_rgb_array
from ferkit.engine.modelfile import ModelMeta, build_model, save
from ferkit.engine.predict import Recognizer
from ferkit.engine.sources import SaveFolder, expand_sources
from ferkit.errors import FerkitError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = load_config("r18_cbam", {"stem": "imagenet"})
    meta = ModelMeta.from_config(cfg, FER_CLASSES, name="test")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "test.safetensors"
    return save(build_model(meta).eval(), meta, path, weights="fp32")


@pytest.fixture(scope="module")
def recognizer(model_file):
    return Recognizer.from_checkpoint(model_file, backend="torch")


def _probs(result):
    return [result.faces[0].probs[c] for c in FER_CLASSES]


def test_bad_arrays_do_not_take_the_others_down(recognizer):
    photo = load_image(sample_image_path())
    strip = np.full((5, 5000, 3), 120, np.uint8)  # rounds to a 0-pixel side when scaled for detection
    results = recognizer([photo, np.zeros((0, 0, 3), np.uint8), strip, "no/such/file.jpg", 42, photo])
    assert [r.status for r in results] == ["ok", "error", "no_face", "error", "error", "ok"]
    assert results[1].source == "<input 1>" and "shape" in results[1].error
    assert "int" in results[4].error
    assert _probs(results[0]) == pytest.approx(_probs(results[5]))


def test_bytes_pil_and_path_inputs_agree(recognizer, tmp_path):
    path = sample_image_path()
    by_path, by_bytes = recognizer([path, path.read_bytes()])
    assert by_bytes.status == "ok" and by_bytes.faces[0].box == by_path.faces[0].box
    assert _probs(by_bytes) == pytest.approx(_probs(by_path), abs=1e-6)
    (empty,) = recognizer([b""])
    assert empty.status == "error"


def test_pil_images_are_turned_upright_by_exif(recognizer, tmp_path):
    # The photo stored rotated, with an EXIF tag saying so: path and PIL inputs must read it upright.
    upright = Image.open(sample_image_path()).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / "tagged.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    assert pil_to_array(Image.open(path)).shape == np.asarray(upright).shape
    by_path, by_pil = recognizer([path, Image.open(path)])
    assert by_pil.status == by_path.status == "ok"
    assert by_pil.faces[0].box == by_path.faces[0].box


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    grey8 = np.asarray(Image.open(sample_image_path()).convert("L"))
    grey16 = grey8.astype(np.uint16) * 257
    path = tmp_path / "deep.png"
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == grey8.shape + (3,)
    assert np.abs(loaded[..., 0].astype(int) - grey8).max() <= 1  # not white
    assert np.array_equal(to_rgb_array(grey16), grey8)
    assert np.array_equal(to_rgb_array(grey8 / 255.0), grey8)
    assert to_rgb_array(np.ones((4, 4), bool)).max() == 255
    assert to_rgb_array(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)
    with pytest.raises(FerkitError, match="shape"):
        to_rgb_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(FerkitError, match="not a readable image"):
        decode_image(b"not an image at all")


def test_cli_folder_with_a_strip_image_reports_every_file(model_file, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.open(sample_image_path()).save(folder / f"p{i}.jpg")
    Image.fromarray(np.full((5, 5000), 99, np.uint8)).save(folder / "a_strip.png")
    code = main(["predict", str(folder), "--model", str(model_file), "--format", "jsonl", "--no-progress",
                 "--backend", "torch"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and code == 0
    assert sorted(r["status"] for r in rows) == ["no_face", "ok", "ok", "ok"]


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--batch-size", "-1"], ["--stride", "0"],
                                    ["--smooth", "5"], ["--smooth", "-0.1"], ["--min-face", "0"],
                                    ["--detect-size", "-1"]])
def test_cli_refuses_bad_predict_options(option, tmp_path, capsys):
    # checked by the library's check_options (the one place the bounds are written), before any folder or model
    assert main(["predict", str(sample_image_path()), "--save", str(tmp_path / "out"), *option]) == 2
    err = capsys.readouterr().err
    # the option named as it was typed
    assert len(err.strip().splitlines()) == 1 and f"error: {option[0]} " in err
    assert not (tmp_path / "out").exists()  # refused before any folder was made


def test_api_refuses_bad_options(model_file):
    for options in ({"batch_size": 0}, {"min_face": 0}, {"detect_size": -1}, {"tta": "sideways"},
                    {"detector": "magic"}):
        with pytest.raises(FerkitError):
            Recognizer.from_checkpoint(model_file, backend="torch", **options)


def test_empty_name_and_empty_folder_are_errors(model_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    sources = expand_sources(["", str(tmp_path / "empty")])
    assert [s.error is not None for s in sources] == [True, True]
    code = main(["predict", "", str(tmp_path / "empty"), "--model", str(model_file), "--format", "jsonl",
                 "--no-progress", "--backend", "torch"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and [r["status"] for r in rows] == ["error", "error"]


def test_save_keeps_relative_paths_and_never_overwrites(model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    for sub in ("a", "b"):
        (photos / sub).mkdir(parents=True)
        Image.open(sample_image_path()).save(photos / sub / "x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "precious.jpg"
    outside.write_bytes(b"keep me")
    (out / "a").mkdir()
    os.symlink(outside, out / "a" / "x_ferkit.jpg")  # a link planted where the first output would go
    args = ["predict", str(photos), "--model", str(model_file), "--save", str(out), "--no-progress",
            "--backend", "torch"]
    assert main(args) == 0
    assert outside.read_bytes() == b"keep me"  # the link was not followed
    assert (out / "a" / "x_ferkit_2.jpg").is_file() and (out / "b" / "x_ferkit.jpg").is_file()
    assert main(args) == 0  # a second run writes new names, the first run's files stay
    assert (out / "b" / "x_ferkit_2.jpg").is_file()
    # two inputs named alike, each given as a file: two outputs
    direct = tmp_path / "direct"
    assert main(["predict", str(photos / "a" / "x.jpg"), str(photos / "b" / "x.jpg"), "--model", str(model_file),
                 "--save", str(direct), "--no-progress", "--backend", "torch"]) == 0
    assert sorted(p.name for p in direct.iterdir()) == ["x_ferkit.jpg", "x_ferkit_2.jpg"]
    capsys.readouterr()


def test_save_onto_a_file_or_a_read_only_folder_is_refused_first(model_file, tmp_path, capsys, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    assert main(["predict", str(sample_image_path()), "--model", str(model_file), "--save", str(target)]) == 2
    assert target.read_text() == "mine" and "not a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # root can write anywhere: creating a file in the folder is made to fail as it would for anyone else
    mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == locked.resolve():
            raise PermissionError(13, "Permission denied", str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(FerkitError, match="permission denied"):
        SaveFolder(locked)
    assert main(["predict", str(sample_image_path()), "--model", str(model_file), "--save", str(locked)]) == 2
    assert "permission denied" in capsys.readouterr().err and not any(locked.iterdir())


def test_non_utf8_file_names_under_a_strict_stdout(model_file, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(sample_image_path()).save(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))
    Image.open(sample_image_path()).save(folder / "z.jpg")
    for fmt in ("table", "csv"):
        done = subprocess.run([sys.executable, "-c", "import sys; from ferkit.cli import main; sys.exit(main())", "predict", str(folder), "--model", str(model_file),
                               "--format", fmt, "--no-progress", "--backend", "torch"],
                              capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        out = done.stdout.decode("utf-8")
        assert "caf" in out and "z.jpg" in out


def test_many_inputs_stream_through_the_api_in_one_call(recognizer):
    photo = io.BytesIO(sample_image_path().read_bytes()).getvalue()
    results = recognizer([photo] * 3 + [np.zeros((10, 10), np.uint16)])
    assert [r.status for r in results] == ["ok", "ok", "ok", "no_face"]


def test_save_follows_no_link_at_any_depth(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(elsewhere, target_is_directory=True)
    save = SaveFolder(out)
    with pytest.raises(FerkitError, match="a link inside the --save folder; not followed"):
        save.claim("a/b/y.jpg", ".jpg")
    assert not any(elsewhere.iterdir())
    (out / "c").write_text("a file")
    with pytest.raises(FerkitError, match="a file inside the --save folder"):
        save.claim("c/y.jpg", ".jpg")
    assert save.claim("d/e/y.jpg", ".jpg") == out / "d" / "e" / "y_ferkit.jpg"


def test_names_too_long_cost_only_their_own_input(model_file, tmp_path, capsys):
    good = tmp_path / "good.jpg"
    Image.open(sample_image_path()).save(good)
    near_limit = tmp_path / ("c" * 250 + ".jpg")  # a legal name whose "_ferkit" output would not be
    Image.open(sample_image_path()).save(near_limit)
    too_long = str(tmp_path / ("a" * 300 + ".jpg"))
    too_deep = str(tmp_path / "/".join(["b" * 200] * 25) / "x.jpg")
    out = tmp_path / "out"
    args = ["predict", str(good), too_long, too_deep, str(near_limit), "--model", str(model_file), "--format",
            "jsonl", "--save", str(out), "--no-progress", "--backend", "torch"]
    assert main(args) == 1  # some inputs failed; the run went on
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert all(len(r["error"]) < 300 and "cannot be read" in r["error"] for r in rows[1:3])
    assert "Traceback" not in captured.err
    saved = sorted(p.name for p in out.iterdir())
    assert saved == ["c" * 200 + "_ferkit.jpg", "good_ferkit.jpg"]


def _clip(path: Path, frames: int, fps: int = 10) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    face = cv2.resize(cv2.imread(str(sample_image_path())), (120, 120))
    for _ in range(frames):
        frame = np.full((120, 160, 3), 90, np.uint8)
        frame[:, 20:140] = face
        writer.write(frame)
    writer.release()
    return path


def test_outputs_come_in_argument_order_with_frame_and_time_fields(model_file, tmp_path, capsys):
    photo = str(sample_image_path())
    clip = _clip(tmp_path / "clip.avi", 3)
    assert main(["predict", photo, str(clip), photo, "--model", str(model_file), "--format", "jsonl",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(Path(r["source"]).name, r["frame"]) for r in rows] == [
        ("astronaut.jpg", None), ("clip.avi", 0), ("clip.avi", 1), ("clip.avi", 2), ("astronaut.jpg", None)]
    assert [r["time_s"] for r in rows[1:4]] == [0.0, 0.1, 0.2]
    # one schema: every field of ImageRecord, the eyes and the image size included, in every row
    from ferkit.engine.schema import ImageRecord

    assert all(list(r) == list(ImageRecord.__dataclass_fields__) for r in rows)
    first = rows[0]
    assert (first["width"], first["height"], first["model"]) == (512, 512, "test")
    assert len(first["faces"][0]["eyes"]) == 2 and all(len(str(v).split(".")[-1]) <= 1
                                                        for point in first["faces"][0]["eyes"] for v in point)
    assert all(len(str(p).split(".")[-1]) <= 4 for p in first["faces"][0]["probs"].values())


def test_results_go_to_a_new_file_in_the_format_its_name_says(model_file, tmp_path, capsys):
    photo = str(sample_image_path())
    out = tmp_path / "results.csv"
    assert main(["predict", photo, photo, "--model", str(model_file), "--out", str(out), "--no-progress"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("source,status,error,frame") and len(lines) == 3
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing on the terminal but the closing line on stderr
    summary = captured.err.strip().splitlines()[-1]
    assert summary.startswith("2 inputs (images and frames), 2 faces, 0 without a face, 0 errors; ")
    assert summary.endswith(f"results in {out}")
    before = out.read_bytes()
    assert main(["predict", photo, "--model", str(model_file), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before  # never overwritten
    assert main(["predict", photo, "--model", str(model_file), "--out", str(tmp_path / "r.txt")]) == 2
    assert "--format" in capsys.readouterr().err and not (tmp_path / "r.txt").exists()


def test_progress_counts_images_and_a_strided_video_ends_full(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ferkit.cli._on_terminal", lambda stream: True)  # the bars a terminal shows
    photo = str(sample_image_path())
    clip = _clip(tmp_path / "clip.avi", 9)
    assert main(["predict", photo, photo, photo, str(clip), "--stride", "2", "--model", str(model_file)]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "image" in err  # images, not batches, and shown for a handful
    assert "9/9" in err  # frames 0, 2, .., 8 read: the bar ends at the video's length


def test_a_missing_webcam_is_one_line_without_opencv_noise(model_file, capfd):
    assert main(["predict", "7", "--model", str(model_file), "--no-progress"]) == 1
    out, err = capfd.readouterr()
    assert "[ WARN" not in out + err and "cannot open this webcam" in out


def test_iphone_heic_photos_are_read_and_without_the_extra_the_error_names_it(recognizer, tmp_path, monkeypatch):
    import pillow_heif

    from ferkit.detect import image as image_module

    heic = tmp_path / "IMG_0001.HEIC"
    pillow_heif.from_pillow(Image.open(sample_image_path())).save(heic, quality=90)
    array = load_image(heic)
    assert array.shape == (512, 512, 3) and abs(float(array.mean()) - float(load_image(sample_image_path()).mean())) < 3
    (result,) = recognizer(heic)
    assert result.status == "ok" and len(result.faces) == 1
    monkeypatch.setattr(image_module, "heif_ready", lambda: False)  # as without pillow-heif
    with pytest.raises(FerkitError, match=r'IMG_0001.HEIC: a HEIF/HEIC photo; to read it: pip install "ferkit\[heif\]"'):
        load_image(heic)
    with pytest.raises(FerkitError, match="not a readable image"):
        decode_image(b"\0\0\0\x18ftypisom" + bytes(32))  # an MP4 is not a HEIF photo: the usual message


def test_face_crops_without_a_face_found_get_one_hint_naming_no_detect(model_file, tmp_path, capsys):
    from conftest import write_kaggle_tree

    data = write_kaggle_tree(tmp_path / "fer", {"PrivateTest": 1})  # 48x48 patterns: no face to find
    assert main(["predict", str(data), "--model", str(model_file), "--no-progress", "--format", "jsonl"]) == 0
    err = capsys.readouterr().err
    assert err.count("run with --no-detect") == 1 and "7 image(s) of at most 256 px had no face found" in err
    assert main(["predict", str(data), "--model", str(model_file), "--no-progress", "--no-detect"]) == 0
    assert "--no-detect" not in capsys.readouterr().err  # taken already: nothing to say


def test_parquet_holds_the_csv_rows_typed_by_the_one_schema(model_file, tmp_path, capsys):
    import csv as csv_module

    import pyarrow.parquet as pq

    from ferkit.engine.schema import arrow_schema

    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(blank)
    clip = _clip(tmp_path / "clip.avi", 2)
    inputs = [str(sample_image_path()), str(blank), str(clip)]
    assert main(["predict", *inputs, "--model", str(model_file), "--out", str(tmp_path / "r.parquet"),
                 "--no-progress"]) == 0
    assert main(["predict", *inputs, "--model", str(model_file), "--out", str(tmp_path / "r.csv"),
                 "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.schema.equals(arrow_schema(list(FER_CLASSES)))  # explicit types, even for all-empty columns
    rows = table.to_pylist()
    with open(tmp_path / "r.csv", newline="") as f:
        text_rows = list(csv_module.DictReader(f))
    assert len(rows) == len(text_rows) == 4  # the photo's face, the blank's empty row, two frames
    for typed, text in zip(rows, text_rows):  # the same cells: empty as null, numbers as numbers
        assert list(typed) == list(text)
        for column, value in typed.items():
            if value is None:
                assert text[column] == "", column
            elif isinstance(value, float):
                assert value == pytest.approx(float(text[column]), rel=1e-6), column  # float32
            else:
                assert str(value) == text[column], column
    assert [r["status"] for r in rows[:2]] == ["ok", "no_face"] and rows[1]["frame"] is None
    assert [(r["source"], r["frame"]) for r in rows[2:]] == [(str(clip), 0), (str(clip), 1)]
    assert rows[3]["time_s"] == pytest.approx(0.1) and isinstance(rows[0]["x"], int)
    assert main(["predict", inputs[0], "--model", str(model_file), "--format", "parquet"]) == 2
    assert "--out FILE.parquet" in capsys.readouterr().err
