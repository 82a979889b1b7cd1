"""Tests for ferkit.data.ferplus: FER+ votes as majority and soft labels, from its PNG folders or fer2013.csv."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from data_helpers import error_names, save_gray

from ferkit.data import FER8_CLASSES, FER_CLASSES, FERDataset, load_dataset, load_ferplus
from ferkit.errors import FerkitError

FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                  "fear", "contempt", "unknown", "NF"]


# Usage, image name (empty: FER+ made no PNG), votes; the names drift from the row index as in the real file.
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),    # 0 neutral
    ("Training", "fer0000001.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),   # 1 happy
    ("Training", "fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 6, 2, 2]),    # 2 contempt
    ("Training", "fer0000003.png", [0, 4, 4, 0, 0, 0, 0, 0, 2, 0]),    # 3 tie -> out
    ("Training", "fer0000004.png", [1, 0, 0, 0, 0, 0, 0, 0, 6, 3]),    # 4 unknown -> out
    ("Training", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),                 # 5 not a face, no PNG
    ("Training", "fer0000005.png", [0, 0, 0, 0, 2, 0, 0, 0, 0, 8]),    # 6 not a face -> out
    ("Training", "fer0000006.png", [0, 0, 0, 3, 5, 2, 0, 0, 0, 0]),    # 7 angry
    ("Training", "fer0000007.png", [0, 0, 7, 0, 0, 0, 3, 0, 0, 0]),    # 8 surprise
    ("PublicTest", "fer0000008.png", [0, 0, 0, 0, 0, 8, 2, 0, 0, 0]),  # 9 disgust
    ("PublicTest", "fer0000009.png", [0, 0, 0, 0, 0, 0, 0, 5, 0, 5]),  # 10 tie contempt/NF -> out
    ("PublicTest", "fer0000010.png", [2, 0, 0, 6, 0, 0, 0, 2, 0, 0]),  # 11 sad
    ("PrivateTest", "fer0000011.png", [0, 0, 0, 0, 0, 0, 9, 1, 0, 0]),  # 12 fear
    ("PrivateTest", "fer0000012.png", [3, 0, 0, 0, 0, 0, 0, 7, 0, 0]),  # 13 contempt
    ("PrivateTest", "fer0000011.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # 14 repeats row 12's name
]


FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}


# Rows kept with 8 classes, by split, with their labels.
FERPLUS_KEPT = {
    "train": [(0, "neutral"), (1, "happy"), (2, "contempt"), (7, "angry"), (8, "surprise")],
    "val": [(9, "disgust"), (11, "sad")],
    "test": [(12, "fear"), (13, "contempt")],
}


def row_value(row: int) -> int:
    return 10 + 10 * row


def write_votes(path: Path, rows=FERPLUS_ROWS, header=FERPLUS_HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([usage, name, *votes] for usage, name, votes in rows)
    return path


def write_pngs(root: Path, label_csv_rows=FERPLUS_ROWS) -> Path:
    """FER2013{Train,Valid,Test}/ferNNNNNNN.png (first row naming a file wins) and each folder's label.csv."""
    labels: dict[str, list[list]] = {folder: [] for folder in FERPLUS_FOLDERS.values()}
    for i, (usage, name, votes) in enumerate(label_csv_rows):
        path = root / FERPLUS_FOLDERS[usage] / name
        if not name or path.exists():
            continue
        save_gray(path, row_value(i), size=(48, 48))
        labels[FERPLUS_FOLDERS[usage]].append([name, "(0, 0, 48, 48)", *votes])
    for folder, rows in labels.items():
        with open(root / folder / "label.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


def write_fer2013_csv(path: Path, usages: list[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for i, usage in enumerate(usages):
            writer.writerow([i % 7, " ".join([str(row_value(i))] * 2304), usage])
    return path


@pytest.fixture
def ferplus_root(tmp_path: Path) -> Path:
    root = tmp_path / "ferplus"
    write_votes(root / "fer2013new.csv")
    return write_pngs(root)


def check_ferplus(data: dict[str, FERDataset], classes: tuple[str, ...] = FER8_CLASSES) -> None:
    for split, kept in FERPLUS_KEPT.items():
        kept = [(row, name) for row, name in kept if name in classes]
        d = data[split]
        assert d.classes == classes and d.images.shape == (len(kept), 1, 48, 48)
        assert [classes[i] for i in d.labels.tolist()] == [name for _, name in kept]
        assert d.images[:, 0, 0, 0].tolist() == [row_value(row) for row, _ in kept]
        assert d.soft_labels is not None and d.soft_labels.shape == (len(kept), len(classes))
        assert torch.allclose(d.soft_labels.sum(dim=1), torch.ones(len(kept)))
        assert torch.equal(d.soft_labels.argmax(dim=1), d.labels)


def test_ferplus_png_folders_majority_and_soft_labels(ferplus_root: Path) -> None:
    data = load_ferplus(ferplus_root, progress=False)
    check_ferplus(data)
    assert [len(data[s]) for s in ("train", "val", "test")] == [5, 2, 2]
    neutral_row = data["train"].soft_labels[0]
    expected = dict(neutral=0.4, sad=0.1, angry=0.3, disgust=0.2)
    assert neutral_row.tolist() == pytest.approx([expected.get(c, 0.0) for c in FER8_CLASSES])
    assert data["train"].note == (
        "FER+ majority vote from fer2013new.csv, 8 classes; left out 4 rows: 2 not a face, 1 tied, 1 unknown"
    )
    assert data["test"].note.endswith("left out 1 rows: 1 repeating an image name")

    seven = load_ferplus(ferplus_root, classes=7, progress=False)
    check_ferplus(seven, FER_CLASSES)
    assert [len(seven[s]) for s in ("train", "val", "test")] == [4, 2, 1]
    sad_row = seven["val"].soft_labels[1]
    assert sad_row.tolist() == pytest.approx([0.75 if c == "sad" else 0.25 if c == "neutral" else 0.0
                                              for c in FER_CLASSES])
    assert "1 contempt" in seven["train"].note


def test_ferplus_from_original_csv_matches_pngs(ferplus_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "csv-form"
    write_votes(root / "fer2013new.csv")
    write_fer2013_csv(root / "fer2013.csv", [usage for usage, _, _ in FERPLUS_ROWS])
    from_csv = load_ferplus(root / "fer2013new.csv", progress=False)
    check_ferplus(from_csv)
    from_png = load_ferplus(ferplus_root, progress=False)
    for split in from_png:
        assert torch.equal(from_csv[split].images, from_png[split].images)
        assert torch.equal(from_csv[split].soft_labels, from_png[split].soft_labels)
    # A folder with both CSVs is FER+ to the dispatcher, and FER2013 when forced.
    assert load_dataset(root, progress=False)["train"].soft_labels is not None
    forced = load_dataset(root, format="fer2013", progress=False)
    assert forced["train"].classes == FER_CLASSES and len(forced["train"]) == 9


def test_ferplus_fer2013_labels_read_edited_votes_again_through_the_cache(tmp_path: Path) -> None:
    # The votes file is part of the cache key with its size and mtime: an edited one is read again.
    root = tmp_path / "csv-form"
    write_votes(root / "fer2013new.csv")
    write_fer2013_csv(root / "fer2013.csv", [usage for usage, _, _ in FERPLUS_ROWS])
    options = dict(classes=7, hard_labels="fer2013", progress=False, cache_dir=tmp_path / "cache", splits=("train",))
    before = load_dataset(root, **options)["train"].soft_labels[1]
    assert before.tolist() == [1.0 if c == "happy" else 0.0 for c in FER_CLASSES]
    rows = list(FERPLUS_ROWS)
    rows[1] = ("Training", "fer0000001.png", [0, 5, 5, 0, 0, 0, 0, 0, 0, 0])  # now half happy, half surprise
    write_votes(root / "fer2013new.csv", rows)
    after = load_dataset(root, **options)["train"].soft_labels[1]
    assert after.tolist() == [0.5 if c in ("happy", "surprise") else 0.0 for c in FER_CLASSES]


def test_ferplus_with_fer2013_hard_labels_keeps_every_row(tmp_path: Path) -> None:
    root = tmp_path / "csv-form"
    write_votes(root / "fer2013new.csv")
    write_fer2013_csv(root / "fer2013.csv", [usage for usage, _, _ in FERPLUS_ROWS])
    data = load_dataset(root, classes=7, hard_labels="fer2013", progress=False)
    usages = [usage for usage, _, _ in FERPLUS_ROWS]
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        rows = [i for i, u in enumerate(usages) if u == usage]
        d = data[split]
        assert d.classes == FER_CLASSES and len(d) == len(rows)
        assert d.labels.tolist() == [i % 7 for i in rows]  # fer2013.csv's emotion column, not the votes
        assert d.images[:, 0, 0, 0].tolist() == [row_value(i) for i in rows]
        assert torch.allclose(d.soft_labels.sum(dim=1), torch.ones(len(rows)))
    train = data["train"]
    # Row 0's votes over the 7 classes; row 5 (all not-a-face) falls back to its own label, one-hot.
    assert train.soft_labels[0].tolist() == pytest.approx(
        [dict(neutral=0.4, sad=0.1, angry=0.3, disgust=0.2).get(c, 0.0) for c in FER_CLASSES])
    assert train.soft_labels[5].tolist() == [1.0 if i == 5 % 7 else 0.0 for i in range(7)]
    # Row 2 has contempt votes and two unknown/NF: its 7-class mass is empty too, so one-hot.
    assert train.soft_labels[2].tolist() == [1.0 if i == 2 else 0.0 for i in range(7)]


@pytest.mark.parametrize("options, message", [
    (dict(hard_labels="fer2013"), "needs classes=7"),
    (dict(classes=7, hard_labels="votes"), "hard_labels must be one of ferplus, fer2013"),
])
def test_ferplus_hard_label_errors(ferplus_root: Path, options: dict, message: str) -> None:
    with pytest.raises(FerkitError, match=message):
        load_dataset(ferplus_root, progress=False, **options)


def test_ferplus_fer2013_labels_need_the_original_csv(ferplus_root: Path) -> None:
    with pytest.raises(FerkitError, match="reads FER2013's labels from fer2013.csv"):
        load_dataset(ferplus_root, classes=7, hard_labels="fer2013", progress=False)


def test_ferplus_votes_from_label_csv_or_elsewhere(tmp_path: Path) -> None:
    # label.csv that disagrees with fer2013new.csv on row 8: 10 fear votes instead of 7 surprise.
    rows = [(u, n, [0, 0, 0, 0, 0, 0, 10, 0, 0, 0] if i == 8 else v) for i, (u, n, v) in enumerate(FERPLUS_ROWS)]
    pngs = write_pngs(tmp_path / "pngs", rows)
    only_folders = load_dataset(pngs, progress=False)["train"]
    assert FER8_CLASSES[int(only_folders.labels[-1])] == "fear"
    assert "from the folders' label.csv" in only_folders.note
    votes = write_votes(tmp_path / "votes" / "fer2013new.csv")
    with_csv = load_ferplus(votes.parent, images=pngs, progress=False)
    check_ferplus(with_csv)  # fer2013new.csv wins over label.csv: row 8 is surprise
    assert with_csv["train"].source == str(votes.parent)


@pytest.mark.parametrize(
    "row, message",
    [
        (["Training", "fer0000099.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, "x"], "line 17: vote counts must be whole numbers"),
        (["Training", "fer0000099.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, -1], "line 17: vote counts must be whole numbers"),
        (["Validation", "fer0000099.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, 0], "line 17: Usage 'Validation'"),
        (["Training", "fer0000099.png", 1, 2], "line 17: 4 fields, expected 12"),
    ],
)
def test_ferplus_bad_vote_rows(ferplus_root: Path, row: list, message: str) -> None:
    votes = ferplus_root / "fer2013new.csv"
    with open(votes, "a", newline="") as handle:
        csv.writer(handle).writerow(row)
    with pytest.raises(FerkitError, match=message) as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, votes)


def test_ferplus_file_errors(ferplus_root: Path, tmp_path: Path) -> None:
    votes = ferplus_root / "fer2013new.csv"
    missing = ferplus_root / "FER2013Valid" / "fer0000010.png"
    missing.unlink()
    with pytest.raises(FerkitError, match="cannot read as an image") as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, missing)
    assert load_ferplus(ferplus_root, skip_bad=True, progress=False)["val"].skipped == 1

    write_votes(votes, header=FERPLUS_HEADER[:-1] + ["not_face"])
    with pytest.raises(FerkitError, match="not a FER\\+ vote file, missing column\\(s\\) NF") as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, votes)
    votes.write_bytes(b"Usage,Image name\n\xff\xfe")
    with pytest.raises(FerkitError, match="cannot read the FER\\+ vote file") as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, votes)

    lone = write_votes(tmp_path / "lone" / "fer2013new.csv")
    with pytest.raises(FerkitError, match="no FER\\+ images found; expected FER2013Train") as err:
        load_ferplus(lone, progress=False)
    assert error_names(err, lone)
    write_fer2013_csv(lone.parent / "fer2013.csv", ["Training"] * 3)
    with pytest.raises(FerkitError, match="3 rows but .* has 15") as err:
        load_ferplus(lone, progress=False)
    assert error_names(err, lone.parent / "fer2013.csv")
    write_fer2013_csv(lone.parent / "fer2013.csv", ["Training"] * 15)
    with pytest.raises(FerkitError, match="row 10 is train but .* row 10 is val") as err:
        load_ferplus(lone, progress=False)
    assert error_names(err, lone.parent / "fer2013.csv")
    with pytest.raises(FerkitError, match="classes must be 7 or 8"):
        load_ferplus(ferplus_root, classes=6)
