"""Tests for cross-validation: subject-independent folds, per-fold and pooled scores, resuming."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.cli import main
from ferkit.data import FER_CLASSES, FERDataset
from ferkit.analysis import crossval
from ferkit.analysis.crossval import fold_splits, make_folds, pool_splits
from ferkit.errors import FerkitError

from conftest import pattern_images, tiny_split_dict

# Images per subject in a CK+48-like folder: uneven, as real subjects are.
SUBJECTS = {"S005": 10, "S010": 6, "S011": 8, "S022": 4, "S026": 6, "S032": 8}
FOLDERS = ("anger", "happy", "sadness", "surprise")
# Tiny and fast (resnet_tiny: the engine is under test, not ResNet-18); input 32 because a stride-2 conv
# on a 1x1 map gets corrupt bf16 gradients from oneDNN.
FAST = ["model=resnet_tiny", "stem=imagenet", "input_size=32", "epochs=1", "batch_size=16", "eval_batch_size=64",
        "attention=none", "precision=fp32", "tta=none", "degrees=0.0", "threads=1", "val_fraction=0.2"]


def write_ck48(root: Path) -> Path:
    """CK+48 class folders whose file names carry the subject; each subject cycles through the classes."""
    for s, (subject, count) in enumerate(SUBJECTS.items()):
        for i in range(count):
            folder = FOLDERS[i % len(FOLDERS)]
            label = FER_CLASSES.index({"anger": "angry", "sadness": "sad"}.get(folder, folder))
            image = pattern_images(np.array([label]), 48, seed=100 * s + i)[0]
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / folder / f"{subject}_001_{i:08d}.png")
    return root


def run_cv(data: Path, out: Path, *extra: str) -> int:
    return main(["cv", "--config", "r18", "--data", str(data), "--folds", "3", "--out", str(out), "--no-progress",
                 *FAST, *extra])


def test_cv_on_subjects_pools_folds_and_resumes(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_ck48(tmp_path / "ck48")
    out = tmp_path / "cv"
    assert run_cv(data, out) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "cv.json").read_text())
    total = sum(SUBJECTS.values())
    folds = summary["per_fold"]
    assert summary["folding"] == "subject" and summary["folds"] == 3 and summary["n"] == total
    subjects = [set(f["subjects"]) for f in folds]
    assert all(not a & b for i, a in enumerate(subjects) for b in subjects[i + 1:])  # no shared subject
    assert set().union(*subjects) == set(SUBJECTS)
    for fold, held_out in zip(folds, subjects):
        assert fold["n"] == sum(SUBJECTS[s] for s in held_out) == sum(map(sum, fold["report"]["confusion"]))
    assert sum(f["n"] for f in folds) == total
    assert summary["pooled"]["n"] == total == sum(map(sum, summary["pooled"]["confusion"]))
    pooled = np.sum([f["report"]["confusion"] for f in folds], axis=0)
    assert pooled.tolist() == summary["pooled"]["confusion"]
    accuracies = [f["accuracy"] for f in folds]
    assert summary["mean_acc"] == pytest.approx(np.mean(accuracies))
    assert summary["std_acc"] == pytest.approx(np.std(accuracies, ddof=1))
    assert summary["config"]["epochs"] == 1 and summary["seed"] == 0 and summary["command"].startswith("ferkit cv")
    assert "fold  1:" in printed and "+/- " in printed and "pooled confusion (counts)" in printed
    for name in ("pooled.md", "pooled.png", "plan.json", "fold_01/best.pt", "fold_03/fold.json"):
        assert (out / name).is_file(), name

    # A rerun skips every scored fold; without its result file, fold 2 resumes its finished run.
    def no_training(self, *args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(crossval.Trainer, "train_epoch", no_training)
    (out / "fold_02" / "fold.json").unlink()
    assert run_cv(data, out) == 0
    printed = capsys.readouterr().out
    assert printed.count("scored before") == 2 and "fold 2/3: resuming after epoch 1" in printed
    assert json.loads((out / "cv.json").read_text())["per_fold"] == folds


def test_cv_rerun_with_another_plan_is_refused(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_ck48(tmp_path / "ck48")
    out = tmp_path / "cv"
    out.mkdir()
    plan = {"data": str(data), "n": sum(SUBJECTS.values()), "classes": list(FER_CLASSES), "folds": 3,
            "folding": "subject", "fold_sizes": [], "config": {}}
    (out / "plan.json").write_text(json.dumps(plan))
    assert run_cv(data, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "another fold_sizes, config" in err and len(err.strip().splitlines()) == 1


def grouped_pool() -> FERDataset:
    """40 images of 8 subjects (5 each), labels cycling over the 7 classes."""
    labels = torch.arange(40) % 7
    images = torch.from_numpy(pattern_images(labels.numpy(), 16)).unsqueeze(1)
    return FERDataset(images, labels, FER_CLASSES, "train", "generated", groups=torch.arange(40) // 5,
                      group_names=tuple(f"S{i:03d}" for i in range(8)))


def test_fold_splits_keep_subjects_apart() -> None:
    pool = grouped_pool()
    indices, folding = make_folds(pool, 4, seed=0)
    assert folding == "subject"
    for i in range(4):
        splits = fold_splits(pool, indices, i, 0.2, seed=0)
        groups = {name: set(split.groups.tolist()) for name, split in splits.items()}
        assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert sum(len(s) for s in splits.values()) == 40 and splits["test"].split == "test"
        assert torch.equal(splits["test"].labels, pool.labels[indices[i]])


def test_folds_without_subjects_are_stratified() -> None:
    pool = pool_splits(tiny_split_dict())
    assert len(pool) == 210 and pool.groups is None
    indices, folding = make_folds(pool, 5, seed=0)
    assert folding == "stratified"
    for fold in indices:
        assert torch.bincount(pool.labels[fold], minlength=7).tolist() == [6] * 7
    splits = fold_splits(pool, indices, 0, 0.1, seed=0)
    assert torch.bincount(splits["val"].labels, minlength=7).tolist() == [2] * 7  # 10% of 24 per class
    assert len(splits["train"]) + len(splits["val"]) == 168 and len(splits["test"]) == 42
    with pytest.raises(FerkitError, match="val_fraction=0.0 leaves fold 1 without validation"):
        fold_splits(pool, indices, 0, 0.0, seed=0)


def test_cv_with_an_init_model_and_no_config_fine_tunes_with_its_architecture(tmp_path: Path, capsys) -> None:
    from ferkit.config import load_config
    from test_finetune import write_checkpoint

    data = write_ck48(tmp_path / "ck48")
    init = write_checkpoint(tmp_path / "init.pt", FER_CLASSES)  # resnet_tiny, imagenet stem, no attention, 32 px
    recipe = load_config("finetune")
    fast = [o for o in FAST if o.split("=")[0] not in ("model", "stem", "attention", "input_size")]
    assert main(["cv", "--data", str(data), "--folds", "2", "--out", str(tmp_path / "cv"), "--no-progress",
                 f"init={init}", *fast]) == 0
    printed = capsys.readouterr().out
    config = json.loads((tmp_path / "cv" / "cv.json").read_text())["config"]
    # the init model's shape and input, the recipe's optimisation, the command line's overrides
    assert (config["model"], config["stem"], config["attention"], config["input_size"]) == \
        ("resnet_tiny", "imagenet", "none", 32)
    assert config["lr"] == recipe.lr and config["warmup_epochs"] == recipe.warmup_epochs
    assert config["freeze"] == recipe.freeze and config["class_balance"] == recipe.class_balance
    assert config["epochs"] == 1 and config["init"] == str(init)
    assert "fine-tuning with the 'finetune' recipe and the init model's model=resnet_tiny" in printed


def test_fine_tuning_overrides_win_and_a_missing_init_is_refused_before_any_folder(tmp_path: Path, capsys) -> None:
    from ferkit.engine.train import load_train_config
    from test_finetune import write_checkpoint

    init = write_checkpoint(tmp_path / "init.pt", FER_CLASSES)
    cfg, name = load_train_config(None, [f"init={init}", "stem=cifar", "lr=0.3"], log=lambda m: None)
    assert name == "finetune" and (cfg.stem, cfg.lr, cfg.model) == ("cifar", 0.3, "resnet_tiny")
    cfg, name = load_train_config("r18", [f"init={init}"], log=lambda m: None)  # a config given: used as it is
    assert name == "r18" and cfg.model == "resnet18" and cfg.lr == 0.1
    assert load_train_config(None, ["lr=0.3"])[1] == "default"
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(tmp_path), "--out", str(out), f"init={tmp_path / 'missing.pt'}"]) != 0
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err
    assert not out.exists()
