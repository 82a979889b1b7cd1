"""The benchmark scripts still run against the package as it is now (smoke runs with tiny counts)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_predict_speed_quick_run_reports_crop_and_photo_times():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict_speed.py"), "--quick",
                           "--backends", "onnx", "--photos", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_name = {f["figure"]: f for f in figures}
    assert by_name["crop_latency"]["value"] > 0 and by_name["photo_ms"]["value"] > 0
    assert by_name["crop_latency"]["backend"] == "onnx"


def test_haar_settings_names_its_own_benchmark(tmp_path):
    from conftest import write_kaggle_tree

    data = write_kaggle_tree(tmp_path / "fer", {"Training": 1, "PublicTest": 1, "PrivateTest": 2}, size=48)
    out = tmp_path / "haar.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "haar_settings.py"), "--data", str(data),
                           "--faces", "8", "--backgrounds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) >= 2 and {line["benchmark"] for line in lines} == {"haar_settings"}
    assert json.loads(out.read_text())["benchmark"] == "haar_settings"


def test_detector_recall_times_each_detector_in_blocks(monkeypatch):
    # Timed photo by photo in turn, one detector's threads, still busy after its call, slowed the other's.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from detector_recall import TIMING_ROUNDS, time_detectors

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def find_faces(self, photo):
            calls.append((self.name, photo))
            return []

    times = time_detectors({"a": Fake("a"), "b": Fake("b")}, [1, 2, 3])
    assert calls == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)] * TIMING_ROUNDS
    assert set(times) == {"a", "b"} and all(ms >= 0 for ms in times.values())


def test_shift_suite_shifts_are_seeded_and_change_the_face(monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from shift_suite import SHIFTS

    face = (np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8)
    for name, shift in SHIFTS.items():
        if shift is None:
            continue
        a, b = shift(face, np.random.default_rng([0, 1])), shift(face, np.random.default_rng([0, 1]))
        assert a.dtype == np.uint8 and a.ndim in (2, 3), name
        assert np.array_equal(a, b), name  # the same seed and index: the same shifted face for every model
        assert a.shape != face.shape or not np.array_equal(a, face), name
    assert SHIFTS["tall"](face, np.random.default_rng(0)).shape == (181, 143)
    assert SHIFTS["colour"](face, np.random.default_rng(0)).shape == (48, 48, 3)


def test_shift_suite_scores_every_shift_from_the_unshifted_row(tmp_path):
    from conftest import write_kaggle_tree

    data = write_kaggle_tree(tmp_path / "fer", {"Training": 1, "PublicTest": 2, "PrivateTest": 1}, size=48)
    out = tmp_path / "shift.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shift_suite.py"), "--fer2013", str(data),
                           "--sets", "fer2013_val", "--shifts", "tight", "dark", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["shift"] for line in lines] == ["none", "tight", "dark"]
    assert all(line["images"] == 14 and 0 <= line["accuracy"] <= 1 for line in lines)
    assert lines[0]["drop"] == 0 and lines[1]["drop"] == round(lines[0]["accuracy"] - lines[1]["accuracy"], 4)
    assert json.loads(out.read_text())["figures"] == lines


def test_serve_abuse_bomb_is_small_on_the_wire_and_huge_decoded(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from serve_abuse import bomb_body

    body, content_type = bomb_body()
    assert len(body) < 1_000_000 and body.count(b"filename=\"flat.png\"") == 16
    assert content_type.startswith("multipart/form-data; boundary=")


def test_finetune_recipe_carves_disjoint_sets_and_scores_each_recipe(tmp_path):
    import random

    sys.path.insert(0, str(ROOT / "tests"))
    from test_data_ferplus import write_pngs, write_votes

    rng = random.Random(0)
    rows = []
    for i in range(40):  # PublicTest faces with a clear FER+ majority of one of FER2013's seven classes
        votes = [0] * 10
        votes[rng.choice([0, 1, 2, 3, 4, 5, 6])] = 8
        votes[rng.choice([0, 1, 2, 3, 4, 5, 6])] += 2
        rows.append(("PublicTest", f"fer{i:07d}.png", votes))
    rows += [("Training", "fer9999998.png", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
             ("PrivateTest", "fer9999999.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0])]
    root = tmp_path / "ferplus"
    write_votes(root / "fer2013new.csv", rows)
    write_pngs(root, rows)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from finetune_recipe import carve

    parts, held = carve(list(range(40)), 2, 12, 10, seed=0)
    every = torch.cat([*parts, held])
    assert [len(p) for p in parts] == [12, 12] and len(held) == 10 and len(set(every.tolist())) == 34

    out = tmp_path / "ft.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune_recipe.py"), "--ferplus", str(root),
                           "--subsets", "2", "--size", "12", "--holdout", "10", "--out", str(out),
                           "--recipe", "one: epochs=1 batch_size=8 precision=fp32 threads=1 tta=none degrees=0.0 val_fraction=0.5",
                           "--recipe", "frozen: epochs=1 batch_size=8 precision=fp32 threads=1 freeze=5 val_fraction=0.5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    lines = record["figures"]
    assert [(f["recipe"], f["subset"]) for f in lines] == [
        ("none", "all"), ("one", 0), ("one", 1), ("one", "mean"), ("frozen", 0), ("frozen", 1), ("frozen", "mean")]
    assert lines[0]["images"] == 10 and all(f["train_images"] + f["val_images"] == 12 for f in lines[1:3])
    assert lines[3]["accuracy"] == round((lines[1]["accuracy"] + lines[2]["accuracy"]) / 2, 4)
    assert lines[3]["last_epoch_accuracy"] == round((lines[1]["last_epoch_accuracy"]
                                                     + lines[2]["last_epoch_accuracy"]) / 2, 4)
    # the recipe is the finetune config with the init model's architecture, then the overrides
    assert record["base"] == "finetune" and record["configs"]["one"]["stem"] == "s2"
    assert record["configs"]["frozen"]["freeze"] == 5 and record["configs"]["one"]["epochs"] == 1


def test_ship_check_pairs_faces_and_applies_its_rule(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch
    from ship_check import mcnemar, verdict

    baseline = torch.tensor([True, True, False, False, False])
    candidate = torch.tensor([True, False, True, True, True])
    # discordant pairs: 3 the candidate alone reads right, 1 the baseline alone; p = 2 (C(4,0) + C(4,1)) / 2^4
    assert mcnemar(baseline, candidate) == (3, 1, 0.625)
    gained = torch.tensor([True] * 10 + [False] * 5)
    assert mcnemar(torch.zeros(15, dtype=torch.bool), gained) == (10, 0, 2 / 2 ** 10)
    assert mcnemar(baseline, baseline) == (0, 0, 1.0)
    assert verdict({"fer2013_val": (3, 1, 0.625), "ferplus_val": (10, 0, 0.002)}, 0.05)  # better on one, even on the other
    assert not verdict({"fer2013_val": (0, 10, 0.002), "ferplus_val": (10, 0, 0.002)}, 0.05)  # worse on one
    assert not verdict({"fer2013_val": (3, 1, 0.625), "ferplus_val": (4, 2, 0.69)}, 0.05)  # better on neither
