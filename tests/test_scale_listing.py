"""The scale-out run's bookkeeping, without Ray: listing inputs into shards, the listing file, the manifest's
resume check, and the output folder's rules."""
from pathlib import Path

import cv2
import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ferkit.engine.sources import expand_sources
from ferkit.errors import FerkitError
from ferkit.scale import listing
from ferkit.scale.listing import Item
from ferkit.scale.ray_engine import _prepare_folder


def _files(root: Path, names: list[str]) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def _video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 5 % 255, np.uint8))
    writer.release()
    return path


def test_local_inputs_are_listed_as_predict_walks_them_with_absolute_locations(tmp_path, monkeypatch):
    root = _files(tmp_path / "photos", ["b.jpg", "a.jpg", "sub/c.png", ".hidden.jpg", "sub/.d.jpg"])
    monkeypatch.chdir(tmp_path)
    items = list(listing.list_inputs(["photos", "missing.jpg"]))
    assert [i.source for i in items] == [s.location for s in expand_sources(["photos", "missing.jpg"])]
    assert [Path(i.source).name for i in items] == ["a.jpg", "b.jpg", "c.png", "missing.jpg"]
    assert [i.location for i in items[:3]] == [str(root / "a.jpg"), str(root / "b.jpg"), str(root / "sub/c.png")]
    assert items[3].error is not None and "no such file" in items[3].error
    webcam = list(listing.list_inputs(["0"]))
    assert len(webcam) == 1 and "without --engine ray" in webcam[0].error


def test_uri_inputs_are_walked_sorted_without_hidden_names(tmp_path):
    root = _files(tmp_path / "bucket", ["z.jpg", "a/b.jpg", ".git/x.jpg", "a/.y.jpg", "clip.mp4"])
    items = list(listing.list_inputs([f"file://{root}", f"file://{root}/z.jpg", f"file://{tmp_path}/nothing"]))
    assert [i.source for i in items] == [f"file://{root}/a/b.jpg", f"file://{root}/clip.mp4", f"file://{root}/z.jpg",
                                         f"file://{root}/z.jpg", f"file://{tmp_path}/nothing"]
    assert [i.kind for i in items] == ["image", "video", "image", "image", "image"]
    assert items[1].segment == 0 and items[1].start == 0 and items[1].stop is None
    assert items[-1].error is not None and "no such file or folder" in items[-1].error
    unknown = list(listing.list_inputs(["nosuchscheme://bucket/x.jpg"]))
    assert len(unknown) == 1 and unknown[0].error.startswith("nosuchscheme://bucket/x.jpg: cannot be listed")


def test_a_long_video_is_cut_into_segments_the_last_reading_to_the_end(tmp_path):
    clip = _video(tmp_path / "clip.avi", 25)
    items = list(listing.list_inputs([str(clip)], segment_frames=10))
    assert [(i.start, i.stop, i.segment) for i in items] == [(0, 10, 0), (10, 20, 1), (20, None, 2)]
    assert {i.kind for i in items} == {"video"} and {i.source for i in items} == {str(clip)}
    assert [(i.start, i.stop) for i in listing.list_inputs([str(clip)], segment_frames=25)] == [(0, None)]


def test_shards_hold_runs_of_images_and_each_video_segment_alone():
    def image(n):
        return Item(f"{n}.jpg", f"/{n}.jpg")

    video = Item("v.mp4", "/v.mp4", "video", None, 0, None, 0)
    broken_video = Item("w.mp4", "/w.mp4", "video", "w.mp4: cannot be read")
    items = [image(1), image(2), image(3), video, image(4), broken_video, image(5)]
    groups = [[i.source for i in shard] for shard in listing.shards(items, shard_size=2)]
    # a video that cannot be read is one error row: it travels with the images
    assert groups == [["1.jpg", "2.jpg"], ["3.jpg"], ["v.mp4"], ["4.jpg", "w.mp4"], ["5.jpg"]]


def test_the_listing_file_gives_each_shard_its_items_across_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "LISTING_CHUNK", 6)
    monkeypatch.setattr(listing, "LISTING_GROUP", 3)
    fs = pafs.LocalFileSystem()
    items = [Item(f"{n}.jpg", f"/x/{n}.jpg", error="bad" if n == 7 else None) for n in range(20)]
    count, shards, digest = listing.write_listing(fs, str(tmp_path), items, shard_size=2)
    assert (count, shards) == (20, 10)
    assert pq.ParquetFile(tmp_path / listing.LISTING).metadata.num_row_groups == 4  # 3 + 3 + 3 + 1 shards
    assert digest == listing.file_sha256(fs, str(tmp_path / listing.LISTING))
    reader = listing.ListingReader(fs, str(tmp_path))
    for shard in (9, 0, 4, 5):  # out of order, across groups
        assert reader.items(shard) == items[2 * shard:2 * shard + 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp file was renamed
    (tmp_path / "empty").mkdir()
    assert listing.write_listing(fs, str(tmp_path / "empty"), [], 2)[:2] == (0, 0)


def test_a_resume_with_other_settings_is_refused_naming_what_changed():
    old = {"ferkit": "0.1.0", "model": {"sha256": "a" * 64, "name": "default"}, "options": {"min_face": 48},
           "sources": ["photos"], "shard_size": 256, "segment_frames": 9000, "shards": 3}
    listing.check_resume(old, {**old, "command": "another spelling"}, "out")  # the same run: no error
    new = {**old, "model": {"sha256": "b" * 64, "name": "default"}, "options": {"min_face": 32}}
    with pytest.raises(FerkitError) as e:
        listing.check_resume(old, new, "out")
    assert "model.sha256" in str(e.value) and "options.min_face: 48 -> 32" in str(e.value)
    assert "sources" not in str(e.value)


def test_damaged_part_files_are_removed_and_temps_cleaned(tmp_path):
    fs = pafs.LocalFileSystem()
    whole = tmp_path / listing.PART.format(0)
    pq.write_table(pa.table({"a": [1, 2]}), whole)
    cut = tmp_path / listing.PART.format(1)
    cut.write_bytes(whole.read_bytes()[:-10])
    temp = Path(listing.temp_name(str(tmp_path), cut.name))
    temp.write_bytes(b"half")
    assert listing.shard_done(fs, str(whole)) and whole.exists()
    assert not listing.shard_done(fs, str(cut)) and not cut.exists()
    assert not listing.shard_done(fs, str(tmp_path / listing.PART.format(2)))
    assert listing.remove_temps(fs, str(tmp_path)) == 1 and not temp.exists() and whole.exists()


def test_the_output_folder_must_be_new_empty_or_a_ferkit_run(tmp_path):
    fs = pafs.LocalFileSystem()
    assert _prepare_folder(fs, str(tmp_path / "new" / "run"), "new/run") is None
    assert (tmp_path / "new" / "run").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FerkitError, match="a file; the Ray engine writes a folder"):
        _prepare_folder(fs, str(tmp_path / "file"), "file")
    foreign = _files(tmp_path / "foreign", ["notes.txt"])
    with pytest.raises(FerkitError, match=r"not a ferkit run \(notes.txt\)"):
        _prepare_folder(fs, str(foreign), "foreign")
    assert (foreign / "notes.txt").read_text() == "x"  # untouched
    interrupted = _files(tmp_path / "interrupted", [listing.LISTING])  # a listing without its manifest
    assert _prepare_folder(fs, str(interrupted), "interrupted") is None
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / listing.MANIFEST).write_text("{not json")
    with pytest.raises(FerkitError, match="not a readable run manifest"):
        _prepare_folder(fs, str(bad), "bad")


def test_a_list_file_names_inputs_one_a_line_after_those_given(tmp_path):
    root = _files(tmp_path / "photos", ["a.jpg", "b.jpg", "sub/c.jpg"])
    names = tmp_path / "inputs.txt"
    names.write_text(f"# photos of the day\n{root / 'b.jpg'}\n\n{root / 'sub'}\r\nfile://{root}/a.jpg\n")
    items = list(listing.list_inputs([str(root / "a.jpg")], inputs_from=str(names)))
    assert [i.source for i in items] == [str(root / "a.jpg"), str(root / "b.jpg"), str(root / "sub/c.jpg"),
                                         f"file://{root}/a.jpg"]
    digest = listing.check_input_list(str(names))
    names.write_text(names.read_text() + "more.jpg\n")
    assert listing.check_input_list(str(names)) != digest  # a changed list is another run (MANIFEST_KEYS)
    assert "inputs_from" in listing.MANIFEST_KEYS
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9.jpg\n")
    with pytest.raises(FerkitError, match="not UTF-8 text"):
        listing.check_input_list(str(tmp_path / "latin1.txt"))
    with pytest.raises(FerkitError, match="cannot be read"):
        listing.check_input_list(str(tmp_path / "none.txt"))


def test_predict_reads_a_list_file_without_ray_too(tmp_path, capsys):
    import json

    from ferkit.cli import main
    from ferkit.detect import sample_image_path

    names = tmp_path / "inputs.txt"
    names.write_text(f"{sample_image_path()}\n{tmp_path / 'gone.jpg'}\n")
    assert main(["predict", "--inputs-from", str(names), "--format", "jsonl", "--no-progress"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in rows] == ["ok", "error"] and rows[0]["faces"][0]["label"] == "happy"
    assert main(["predict", "--format", "jsonl"]) == 2
    assert "--inputs-from FILE" in capsys.readouterr().err


def test_an_actor_pool_the_cluster_cannot_hold_is_refused_not_waited_for():
    from ferkit.scale.ray_engine import Plan, plan

    class Cluster:  # what ray.cluster_resources() says of a 2-CPU machine without a GPU
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0, "memory": 1e9}

    assert plan(Cluster, None, None, "cpu") == Plan(2, 1, 0.0)  # one 1-thread actor per core
    assert plan(Cluster, None, 2, "cpu") == Plan(1, 2, 0.0)
    assert plan(Cluster, 1, 2, "auto") == Plan(1, 2, 0.0)
    with pytest.raises(FerkitError, match="needs 4 CPUs; the Ray cluster has 2"):
        plan(Cluster, 4, 1, "cpu")
    with pytest.raises(FerkitError, match="the Ray cluster has no GPU"):
        plan(Cluster, None, None, "cuda")
    with pytest.raises(FerkitError, match="the Ray cluster has 2 CPU"):
        plan(Cluster, 1, 3, "cpu")
