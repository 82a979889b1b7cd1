"""``ferkit predict --engine ray`` on a real single-node Ray (no mocks): the same rows as the local CLI, errors
kept per input, resume without duplicates, refused resumes, video segments, a killed actor and a killed driver."""
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import groupby
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from ferkit.cli import main
from ferkit.detect import sample_image_path
from ferkit.errors import FerkitError
from ferkit.scale import listing, predict_dataset, predict_to_folder
from ferkit.scale.ray_engine import ModelBytes, ShardPredictor

PROB_COLUMNS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the whole file (a run started in this process uses it and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Photos as users have them: the portrait at several sizes, grey, mirrored, cut close; one without a
    face, one that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    face = cv2.imread(str(sample_image_path()))
    cv2.imwrite(str(root / "a_full.jpg"), face)
    cv2.imwrite(str(root / "b_small.jpg"), cv2.resize(face, (200, 200), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(root / "c_grey.png"), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "d_mirror.jpg"), face[:, ::-1])
    cv2.imwrite(str(root / "e_wide.jpg"), cv2.copyMakeBorder(face, 0, 0, 300, 300, cv2.BORDER_REFLECT))
    cv2.imwrite(str(root / "f_flat.png"), np.full((120, 160, 3), 128, np.uint8))
    (root / "g_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "sub" / "h_tilt.jpg"),
                cv2.warpAffine(face, cv2.getRotationMatrix2D((256, 256), 20, 1.0), (512, 512)))
    return root


def _clip(path: Path, frames: int) -> Path:
    """A 10 fps clip of the portrait sliding sideways."""
    face = cv2.resize(cv2.imread(str(sample_image_path())), (240, 240))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (360, 240))
    for i in range(frames):
        frame = np.full((240, 360, 3), 90, np.uint8)
        frame[:, 20 + 3 * i:260 + 3 * i] = face
        writer.write(frame)
    writer.release()
    return path


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _cli_rows(tmp_path: Path, sources: list[str], *more: str) -> list[dict]:
    out = tmp_path / "cli.parquet"
    main(["predict", *sources, "--out", str(out), "--no-progress", *more])
    return _rows(out)


def _same_rows(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        for key in a:
            if key in PROB_COLUMNS or key in ("confidence", "score"):
                assert (a[key] is None) == (b[key] is None), key
                if a[key] is not None:
                    assert abs(a[key] - b[key]) <= 1e-5, (a["source"], key, a[key], b[key])
            else:
                assert a[key] == b[key], (a["source"], key)


def test_the_ray_engine_gives_the_local_cli_rows_and_keeps_errors_per_input(cluster, photos, tmp_path):
    sources = [str(photos), str(tmp_path / "missing.jpg")]
    counts = predict_to_folder(sources, str(tmp_path / "run"), shard_size=3, progress=False)
    rows = _rows(tmp_path / "run")
    _same_rows(rows, _cli_rows(tmp_path, sources))
    by_name = {Path(r["source"]).name: r for r in rows}
    assert list(dict.fromkeys(Path(r["source"]).name for r in rows)) == ["a_full.jpg", "b_small.jpg", "c_grey.png", "d_mirror.jpg",
                                                      "e_wide.jpg", "f_flat.png", "g_broken.jpg", "h_tilt.jpg",
                                                      "missing.jpg"]
    assert by_name["a_full.jpg"]["label"] == "happy" and by_name["h_tilt.jpg"]["status"] == "ok"
    assert by_name["f_flat.png"]["status"] == "no_face"
    assert by_name["g_broken.jpg"]["status"] == "error"
    assert by_name["g_broken.jpg"]["error"].startswith(str(photos / "g_broken.jpg"))  # named as the user gave it
    assert "no such file" in by_name["missing.jpg"]["error"]
    assert (counts.items, counts.shards, counts.inputs, counts.errors) == (9, 3, 9, 2)
    manifest = json.loads((tmp_path / "run" / listing.MANIFEST).read_text())
    assert manifest["columns"] == list(rows[0]) and manifest["items"] == 9
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "_listing.parquet", "_manifest.json", "_ray.log", "part-000000.parquet", "part-000001.parquet",
        "part-000002.parquet"]


def test_uris_are_read_through_pyarrow_and_named_as_given(cluster, photos, tmp_path):
    uri = f"file://{photos}/a_full.jpg"
    predict_to_folder([uri, str(photos / "a_full.jpg")], str(tmp_path / "run"), progress=False)
    via_uri, via_path = _rows(tmp_path / "run")
    assert via_uri["source"] == uri and via_uri["status"] == "ok"
    assert {k: v for k, v in via_uri.items() if k != "source"} == {k: v for k, v in via_path.items() if k != "source"}


def test_a_resume_skips_whole_shards_and_redoes_damaged_ones_with_no_row_twice(cluster, photos, tmp_path):
    out = tmp_path / "run"
    sources = [str(photos)]
    predict_to_folder(sources, str(out), shard_size=2, progress=False)
    first = _rows(out)
    (out / listing.PART.format(1)).unlink()  # never written
    cut = out / listing.PART.format(2)
    cut.write_bytes(cut.read_bytes()[:100])  # torn
    (out / ".part-000003.parquet.abc.tmp").write_bytes(b"half a shard")
    counts = predict_to_folder(sources, str(out), shard_size=2, progress=False)
    assert (counts.shards, counts.skipped, counts.inputs) == (4, 2, 4)
    assert _rows(out) == first  # every input once, the same rows
    assert not list(out.glob(".*.tmp"))


def test_a_resume_with_another_model_or_settings_is_refused_and_nothing_is_touched(cluster, photos, tmp_path):
    out = tmp_path / "run"
    predict_to_folder([str(photos / "a_full.jpg")], str(out), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "_ray.log"}
    with pytest.raises(FerkitError, match=r"model\.sha256"):
        predict_to_folder([str(photos / "a_full.jpg")], str(out), "wild", progress=False)
    from ferkit.engine.options import RecognizerOptions

    with pytest.raises(FerkitError, match=r"options\.min_face: 48 -> 32"):
        predict_to_folder([str(photos / "a_full.jpg")], str(out), options=RecognizerOptions(min_face=32),
                          progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "_ray.log"} == before


def test_video_segments_keep_frame_order_and_time_and_their_tracks_stay_unique(cluster, tmp_path):
    clip = _clip(tmp_path / "clip.avi", 25)
    predict_to_folder([str(clip)], str(tmp_path / "run"), segment_frames=10, progress=False)
    rows = _rows(tmp_path / "run")
    assert list(dict.fromkeys(r["frame"] for r in rows)) == list(range(25))
    assert all(r["time_s"] == pytest.approx(r["frame"] / 10, abs=1e-3) for r in rows)
    assert all(r["status"] == "ok" for r in rows)
    # the astronaut's face (in the top half; one frame also finds a "face" on her suit) is one track per
    # segment, and no number is used twice
    portrait = [r["track"] for r in rows if r["y"] < 120]
    assert len(portrait) == 25
    assert portrait[:10] == [1] * 10 and len(set(portrait[10:20])) == 1 and len(set(portrait[20:])) == 1
    assert listing.TRACK_SPAN < portrait[10] < 2 * listing.TRACK_SPAN < portrait[20] < 3 * listing.TRACK_SPAN
    # frame for frame what the local CLI reads (its one track numbered 1 throughout)
    cli = _cli_rows(tmp_path, [str(clip)])
    _same_rows([{**r, "track": None} for r in rows], [{**r, "track": None} for r in cli])


def test_predict_dataset_streams_the_same_rows_to_any_ray_consumer(cluster, photos, tmp_path):
    dataset = predict_dataset([str(photos)], shard_size=3)
    rows = dataset.take_all()
    predict_to_folder([str(photos)], str(tmp_path / "run"), shard_size=3, progress=False)
    _same_rows(rows, _rows(tmp_path / "run"))


def test_an_actor_keeps_no_model_files_on_disk_once_its_model_is_loaded(cluster, tmp_path, monkeypatch):
    # Ray ends actors by killing their processes: files kept for an actor's life were left in the temp folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    predictor = ShardPredictor([ray.put(ModelBytes.read("default"))], {}, "cpu", 1, None, 1, 0.0)
    assert list(tmp_path.iterdir()) == []
    assert predictor.recognizer.backend == "onnx-int8"  # the int8 companion was read before its file went
    probs = predictor.recognizer.classify_crops(torch.full((2, 1, 48, 48), 128, dtype=torch.uint8))
    assert probs.shape == (2, 7) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ShardPredictor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_actor_is_restarted_and_its_shard_retried(cluster, photos, tmp_path):
    out = tmp_path / "run"
    sources = [str(photos)] * 3  # 24 one-image shards
    errors = []

    def run():
        try:
            predict_to_folder(sources, str(out), shard_size=1, actors=1, progress=False)
        except Exception as e:  # reported below
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _actor_pids()
    assert pids, "no actor process found"
    os.kill(pids[0], signal.SIGKILL)
    worker.join(300)
    assert not errors and not worker.is_alive()
    rows = _rows(out)
    names = sorted(p.name for p in photos.rglob("*.*"))
    assert [name for name, _ in groupby(Path(r["source"]).name for r in rows)] == names * 3
    assert sorted(int(p.stem[5:]) for p in out.glob("part-*.parquet")) == list(range(24))


def test_after_the_driver_is_killed_a_rerun_gives_every_input_exactly_once(cluster, photos, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ferkit", "predict", str(photos), str(photos), "--engine", "ray",
               "--address", cluster, "--out", str(out), "--shard-size", "1", "--actors", "1", "--no-progress"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    done = len(list(out.glob("part-*.parquet")))
    assert 3 <= done < 16, driver.stderr.read().decode()[-2000:]
    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr  # g_broken.jpg, twice
    assert f"{done} shard(s) were done already" in rerun.stderr or "were done already" in rerun.stderr
    rows = _rows(out)
    names = [name for name, _ in groupby(Path(r["source"]).name for r in rows)]
    assert len(names) == 16 and names[:8] == names[8:] and len(set(names)) == 8


def test_the_cli_refuses_what_the_ray_engine_cannot_do_before_any_work(tmp_path, capsys, monkeypatch):
    photo = str(sample_image_path())
    for flags, message in ((["--save", str(tmp_path / "s")], "--save is not available with --engine ray"),
                           ([], "give it with --out DIR"),
                           (["--out", str(tmp_path / "o"), "--format", "csv"], "writes Parquet, not csv"),
                           (["--out", str(tmp_path / "o"), "--shard-size", "0"], "--shard-size must be")):
        assert main(["predict", photo, "--engine", "ray", *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["predict", photo, "--actors", "2"]) == 2
    assert "--actors is an option of --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(["predict", photo, "--engine", "ray", "--out", str(tmp_path / "o")]) == 2
    assert 'pip install "ferkit[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


POISON = '''
import os
from PIL import Image

_open = Image.open


def _poisoned(fp, *args, **kwargs):
    if str(fp).endswith("poison.jpg"):  # as a decoder with a native fault would: the process dies
        os._exit(3)
    return _open(fp, *args, **kwargs)


Image.open = _poisoned
'''


def test_an_input_that_kills_every_worker_costs_only_its_shard(photos, tmp_path):
    # Ray Data restarted a dead actor and retried its shard for ever; now 3 times, then the run goes on without it.
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "b_poison.jpg", "c.jpg"):
        (inputs / name).write_bytes((photos / "a_full.jpg").read_bytes())
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(POISON)  # loaded by every Python that Ray starts for this run
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(hooks)}
    done = subprocess.run([sys.executable, "-m", "ferkit", "predict", str(inputs), "--engine", "ray", "--out", str(out),
                           "--shard-size", "1", "--no-progress"], check=False, capture_output=True, text=True,
                          timeout=400, env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 shard(s) failed" in done.stderr and "Traceback" not in done.stderr
    assert [Path(r["source"]).name for r in _rows(out)] == ["a.jpg", "c.jpg"]
    assert sorted(p.name for p in out.glob("part-*")) == ["part-000000.parquet", "part-000002.parquet"]
