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
