"""Tests for ferkit.engine.metrics: every expected value is worked out by hand."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ferkit.engine.metrics import (
    ClassificationReport,
    confusion_matrix,
    expected_calibration_error,
    save_confusion_png,
)
from ferkit.errors import FerkitError

# "disgust" has no samples and is never predicted: its accuracy is None and it has no F1.
CLASSES = ["angry", "disgust", "happy", "neutral"]
TARGETS = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 2, 3, 3, 3])
PREDS = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2, 3, 3, 3, 0])
COUNTS = [
    [3, 0, 1, 0],  # angry: 3 right, 1 taken for happy
    [0, 0, 0, 0],  # disgust: no samples
    [0, 0, 4, 1],  # happy: 4 right, 1 taken for neutral
    [1, 0, 0, 2],  # neutral: 2 right, 1 taken for angry
]


@pytest.fixture
def report() -> ClassificationReport:
    return ClassificationReport.from_predictions(PREDS, TARGETS, CLASSES)


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(PREDS, TARGETS, 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == COUNTS


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lie in"):
        confusion_matrix(torch.tensor([0, 4]), torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 4)
    with pytest.raises(TypeError):
        confusion_matrix(torch.tensor([0.0]), torch.tensor([0]), 4)


def test_accuracy_per_class_and_macro_f1(report: ClassificationReport) -> None:
    assert report.n == 12
    assert report.confusion == COUNTS
    # (3 + 4 + 2) correct of 12
    assert report.accuracy == pytest.approx(9 / 12)
    # recall per true class: 3/4, none, 4/5, 2/3
    assert report.per_class_accuracy == {
        "angry": pytest.approx(0.75),
        "disgust": None,
        "happy": pytest.approx(0.8),
        "neutral": pytest.approx(2 / 3),
    }
    # F1 = 2tp / (2tp + fp + fn):
    #   angry   tp 3, fp 1 (neutral), fn 1 -> 6/8  = 3/4
    #   happy   tp 4, fp 1 (angry),   fn 1 -> 8/10 = 4/5
    #   neutral tp 2, fp 1 (happy),   fn 1 -> 4/6  = 2/3
    #   disgust never occurs -> excluded
    # macro = (3/4 + 4/5 + 2/3) / 3 = (45 + 48 + 40) / 180 = 133/180
    assert report.macro_f1 == pytest.approx(133 / 180)
    # mean recall over the classes that occur: (3/4 + 4/5 + 2/3) / 3, the same 133/180 here
    assert report.mean_class_accuracy == pytest.approx(133 / 180)
    assert report.to_dict()["mean_class_accuracy"] == pytest.approx(133 / 180)


def test_macro_f1_counts_predicted_but_absent_class_as_zero() -> None:
    # a: tp 1, fn 1 -> F1 2/3; b: no samples but predicted once -> F1 0; macro = 1/3
    r = ClassificationReport.from_predictions(torch.tensor([0, 1]), torch.tensor([0, 0]), ["a", "b"])
    assert r.per_class_accuracy == {"a": 0.5, "b": None}
    assert r.macro_f1 == pytest.approx(1 / 3)


def test_from_predictions_rejects_empty() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(ValueError, match="zero predictions"):
        ClassificationReport.from_predictions(empty, empty, ["a"])


def test_confusion_percent(report: ClassificationReport) -> None:
    percent = report.confusion_percent()
    assert percent[0] == pytest.approx([75.0, 0.0, 25.0, 0.0])
    assert percent[1] == [0.0, 0.0, 0.0, 0.0]
    assert percent[2] == pytest.approx([0.0, 0.0, 80.0, 20.0])
    assert percent[3] == pytest.approx([100 / 3, 0.0, 0.0, 200 / 3])
    for row, counts in zip(percent, COUNTS):
        if sum(counts):
            assert sum(row) == pytest.approx(100.0)


def test_to_markdown(report: ClassificationReport) -> None:
    md = report.to_markdown(title="FER2013 test")
    assert md.startswith("### FER2013 test\n")
    assert "accuracy 75.00 %, mean per-class accuracy 73.89 %, macro-F1 0.7389, n = 12" in md
    for name in CLASSES:
        assert f"| {name} |" in md
    assert "| disgust | n/a | 0 |" in md
    assert "| happy | 80.0 | 5 |" in md
    assert "| true \\ predicted | angry | disgust | happy | neutral |" in md
    assert "| angry | 75.0 | 0.0 | 25.0 | 0.0 |" in md
    assert "| neutral | 33.3 | 0.0 | 0.0 | 66.7 |" in md
    assert "###" not in report.to_markdown()


def test_dict_round_trip(report: ClassificationReport) -> None:
    d = report.to_dict()
    assert d["confusion"] == COUNTS
    assert d["confusion_percent"][2] == pytest.approx([0.0, 0.0, 80.0, 20.0])
    assert ClassificationReport.from_dict(d) == report
    assert ClassificationReport.from_dict(json.loads(json.dumps(d))) == report


def test_from_dict_missing_keys() -> None:
    with pytest.raises(FerkitError, match="macro_f1"):
        ClassificationReport.from_dict({"accuracy": 1.0, "per_class_accuracy": {}, "confusion": [],
                                        "classes": [], "n": 0})


def test_save_confusion_png(report: ClassificationReport, tmp_path: Path) -> None:
    path = tmp_path / "plots" / "confusion.png"
    save_confusion_png(report, path, title="toy")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 300
        # a heat map, not a blank canvas
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]


def test_ece_calibrated_is_zero() -> None:
    # every confidence is 0.75 and 3 of 4 are right: accuracy equals confidence
    probs = torch.tensor([[0.75, 0.25]] * 4)
    targets = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0


def test_ece_overconfident() -> None:
    # 4 samples at confidence 0.9 with 2 right (gap 0.4) and 2 at 0.7 both right (gap 0.3);
    # with 15 bins 0.9 and 0.7 fall in different bins: (4 * 0.4 + 2 * 0.3) / 6 = 2.2 / 6
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 1, 1])
    assert expected_calibration_error(probs, targets) == pytest.approx(2.2 / 6)
    # one bin averages first: accuracy 4/6, confidence (3.6 + 1.4) / 6 = 5/6, ECE 1/6
    assert expected_calibration_error(probs, targets, n_bins=1) == pytest.approx(1 / 6)
    # float32 probabilities give the same value up to rounding
    assert expected_calibration_error(probs.float(), targets) == pytest.approx(2.2 / 6, rel=1e-6)


def test_reliability_bins_by_hand_and_ece_from_them():
    from ferkit.engine.metrics import calibration_error, expected_calibration_error, reliability_bins

    # top-1 confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (wrong) in 2 bins: (0, .5], (.5, 1]
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    targets = torch.tensor([0, 0, 0, 0])
    low, high = reliability_bins(probs, targets, n_bins=2)
    assert (low["n"], low["confidence"], low["accuracy"]) == (0, 0.0, 0.0)
    assert high["n"] == 4 and high["confidence"] == pytest.approx((0.9 + 0.8 + 0.6 + 0.55) / 4)
    assert high["accuracy"] == 0.5 and (high["lo"], high["hi"]) == (0.5, 1.0)
    assert calibration_error([low, high]) == pytest.approx(abs(0.5 - 0.7125))
    assert expected_calibration_error(probs, targets, n_bins=2) == pytest.approx(0.2125)


def test_a_report_with_probabilities_keeps_its_reliability_through_json():
    from ferkit.engine.metrics import reliability_bins

    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    targets = torch.tensor([0, 0, 1])
    report = ClassificationReport.from_predictions(probs.argmax(1), targets, ["a", "b"])
    report.reliability = reliability_bins(probs, targets)
    again = ClassificationReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.reliability == report.reliability and again.ece == pytest.approx(report.ece)
    assert "ECE" in report.to_markdown() and "ECE" not in ClassificationReport.from_predictions(
        probs.argmax(1), targets, ["a", "b"]).to_markdown()
