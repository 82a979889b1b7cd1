import json
import shutil

import pytest
import torch

from conftest import write_kaggle_tree
from ferkit.cli import main
from ferkit.config import load_config
from ferkit.data import FER_CLASSES
from ferkit.paper import reproduce as rep
from ferkit.engine.metrics import ClassificationReport
from ferkit.errors import FerkitError

ORIGIN = {"data": "/data/fer2013", "out": "runs/reproduce", "results": "results/reproduce"}


def _report(correct: list[int]) -> dict:
    """A test report whose class i has correct[i] of 10 images right (the rest predicted as class 0 or 1)."""
    targets, preds = [], []
    for label, right in enumerate(correct):
        targets += [label] * 10
        preds += [label] * right + [1 if label == 0 else 0] * (10 - right)
    return ClassificationReport.from_predictions(torch.tensor(preds), torch.tensor(targets), FER_CLASSES).to_dict()


def _record(row: str, seed: int, val: float, test: float, report: dict | None = None, budget: str = "cpu") -> dict:
    record = {"config": {}, "seed": seed, "epochs_done": 8, "best_epoch": 6, "wall_s": 1500.0, "val_acc": val,
              "test_acc": test, "hardware": "test CPU", "reproduce": {"row": row, "budget": budget, **ORIGIN}}
    if report is not None:
        record["test_report"] = report
    return record


def test_table1_means_spread_paper_and_claims():
    records = [_record("r18", 0, 0.55, 0.60), _record("r18", 1, 0.57, 0.62), _record("r18_se", 0, 0.58, 0.63),
               _record("r18_cbam", 0, 0.60, 0.64), _record("r18_cbam", 1, 0.62, 0.68)]
    lines = rep.table_markdown(records, "table1", "cpu").splitlines()
    # sample std: r18 sqrt((1 + 1) / 1) = 1.41 points; r18_cbam sqrt((4 + 4) / 1) = 2.83 points
    assert "| Res18 (`r18`) | 68.46 | 61.00 +/- 1.41 | 56.00 | 2 | 8 (best 6, 6) | 25.0 |" in lines
    assert "| Res18+channel(SE) (`r18_se`) | 69.94 | 63.00 +/- n/a | 58.00 | 1 | 8 (best 6) | 25.0 |" in lines
    assert ("| Res18+spacial+channel(CBAM) (`r18_cbam`) | 71.25 | 66.00 +/- 2.83 | 61.00 | 2 | 8 (best 6, 6) "
            "| 25.0 |") in lines
    assert ("- +CBAM vs Res18: ours +5.00 points, paper +2.79; the seed spread is 2.83 (2 seeds): "
            "the difference exceeds it.") in lines
    assert ("- +SE vs Res18: ours +2.00 points, paper +1.48; the seed spread is unknown (1 seed), "
            "so this difference cannot be told from seed noise.") in lines
    assert any(line.startswith("- +CBAM vs +SE: ours +3.00 points, paper +1.31;") for line in lines)
    assert "stem=imagenet epochs=8" in lines[0] and "Data: fer2013" in lines[0]
    assert lines[-1] == ("Reproduce: `ferkit reproduce table1 --data /data/fer2013 --budget cpu --seeds 2 "
                         "--out runs/reproduce --results results/reproduce`")


def test_table5_reuses_the_cbam_runs_and_table2_the_island_runs():
    records = [_record("r18_cbam", 0, 0.60, 0.64), _record("r18_cbam", 1, 0.62, 0.68),
               _record("r18_cbam_island", 0, 0.63, 0.70), _record("r18_cbam_island_lam0.1", 0, 0.61, 0.65),
               _record("r18_cbam", 0, 0.9, 0.9, budget="full")]  # another budget: left out
    table5 = rep.table_markdown(records, "table5", "cpu").splitlines()
    # the same runs as Table 1's CBAM row, beside Table 5's paper number
    assert ("| Res18+CBAM+L_S (softmax) (`r18_cbam`) | 71.82 | 66.00 +/- 2.83 | 61.00 | 2 | 8 (best 6, 6) "
            "| 25.0 |") in table5
    assert "| Res18+CBAM+L_C (center, lambda 0.5) (`r18_cbam_center`) | 72.79 | not run yet | - | 0 | - | - |" in table5
    assert "- center vs softmax: paper +0.97; ours not run yet." in table5
    assert any(line.startswith("- island vs softmax: ours +4.00 points, paper +1.83;") for line in table5)
    table2 = rep.table_markdown(records, "table2", "cpu")
    assert "paper % (CK+" in table2
    assert "| lambda 0.5 (`r18_cbam_island`) | 89.24 | 70.00 +/- n/a |" in table2
    assert "| lambda 0.2 (`r18_cbam_island_lam0.2`) | - | not run yet |" in table2
    assert ("- lambda 0.5 vs the best other row (ours: lambda 0.1): ours +5.00 points, paper +0.57 vs lambda 0.6;"
            in table2)
    assert "By validation accuracy ours would pick lambda 0.5" in table2


def test_plan_trains_each_run_once():
    runs = rep.plan(rep.tables_of("all"), 2)
    names = [f"{row.name}_seed{seed}" for row, seed in runs]
    assert len(names) == len(set(names)) == 2 * (3 + 2 + 8)  # table1, table5's two new rows, eight new lambdas
    assert [seed for _, seed in runs[:13]] == [0] * 13  # one seed of every row before the next seed
    lam_half = next(row for row in rep.TABLES["table2"].rows if row.label == "lambda 0.5")
    assert lam_half.name == "r18_cbam_island" and load_config("r18_cbam_island").lam == 0.5
    assert rep.row_config(rep.TABLES["table2"].rows[0], "cpu", 3).lam == 0.1
    cfg = rep.row_config(lam_half, "cpu", 3)
    assert (cfg.stem, cfg.epochs, cfg.seed, cfg.loss) == ("imagenet", 8, 3, "island")


def test_confusion_side_by_side_picks_best_validation_run(tmp_path):
    worse_val = _report([9, 9, 9, 9, 9, 9, 9])
    better_val = _report([5, 6, 7, 8, 9, 10, 4])
    island = _report([7, 7, 7, 7, 7, 7, 7])
    records = [_record("r18_cbam", 0, 0.50, 0.90, worse_val), _record("r18_cbam", 1, 0.70, 0.70, better_val),
               _record("r18_cbam_island", 0, 0.40, 0.70, island), _record("r18_cbam_island", 1, 0.60, 0.50, island)]
    assert rep.confusion_markdown(records[:2], "cpu") is None  # no island run yet
    text = rep.confusion_markdown(records, "cpu")
    assert "(a) softmax (`r18_cbam`): seed 1, the best validation accuracy (70.00 %) of 2 seed(s)" in text
    assert "(b) island (`r18_cbam_island`): seed 1" in text
    assert "| angry | 64.35 | 50.00 | 66.57 | 70.00 |" in text
    assert "| neutral | 69.12 | 40.00 | 71.24 | 70.00 |" in text
    # the full matrices follow: 4 of 10 disgust images predicted angry by the picked softmax run, 1 by the other
    assert "| disgust | 40.0 | 60.0 | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 |" in text
    assert "| disgust | 10.0 | 90.0 |" not in text
    short = rep.confusion_markdown(records, "cpu", full=False)  # the README's: diagonals only
    assert "| neutral | 69.12 | 40.00 | 71.24 | 70.00 |" in short and "| disgust | 40.0 |" not in short
    png = rep.save_confusion_pair(records, tmp_path / "confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_are_rewritten_through_the_atomic_writer(tmp_path, written_files):
    folder = tmp_path / "results" / "cpu"
    folder.mkdir(parents=True)
    for row, correct in (("r18_cbam", [9] * 7), ("r18_cbam_island", [7] * 7)):
        (folder / f"{row}_seed0.json").write_text(json.dumps(_record(row, 0, 0.6, 0.6, _report(correct))))
    (folder / "table1.md").write_text("an old table\n")
    paths = rep.write_outputs(["table1", "table5"], "cpu", tmp_path / "results", tmp_path / "runs")
    assert [p.name for p in paths] == ["table1.md", "table5.md", "confusion.md"]
    assert sorted(written_files) == ["confusion.md", "confusion.png", "table1.md", "table5.md"]
    assert "an old table" not in (folder / "table1.md").read_text()


def test_reproduce_trains_once_then_skips_and_resumes(tmp_path, monkeypatch, capsys):
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 10, "PrivateTest": 3})
    # the reproduction's bookkeeping is under test, not ResNet-18: the test budget trains the tiny model
    calls = []

    def counting_train(cfg, splits, run_dir, resume=False, **kwargs):
        assert cfg.model == "resnet_tiny"
        calls.append((run_dir.name, resume, cfg.seed, cfg.input_size))
        return real_train(cfg, splits, run_dir, resume=resume, **kwargs)

    real_train = rep.train
    monkeypatch.setattr(rep, "train", counting_train)
    # Seconds on tiny generated data, with the tiny registered model. fp32 because oneDNN's bf16 kernels fail
    # below 32 pixels; one thread because tests share the CPU, where two threads run 3x slower than one.
    # Each run's own pictures (curves, test report) are the trainer's, tested there; the tables' are drawn.
    monkeypatch.setattr("ferkit.engine.train.can_draw", lambda: False)
    monkeypatch.setattr("ferkit.engine.evaluate.can_draw", lambda: False)
    monkeypatch.setitem(rep.BUDGETS, "test", {"model": "resnet_tiny", "stem": "imagenet", "input_size": 32,
                                              "epochs": 1, "batch_size": 32, "precision": "fp32", "tta": "none",
                                              "threads": 1})
    out, results = tmp_path / "runs", tmp_path / "results"
    argv = ["reproduce", "table5", "--data", str(data), "--budget", "test", "--seeds", "1", "--out", str(out),
            "--results", str(results), "--no-progress"]
    assert main(argv) == 0
    assert calls == [(f"{name}_seed0", False, 0, 32) for name in ("r18_cbam", "r18_cbam_center", "r18_cbam_island")]
    folder = results / "test"
    record = json.loads((folder / "r18_cbam_center_seed0.json").read_text())
    assert record["reproduce"]["row"] == "r18_cbam_center" and record["test_report"]["n"] == 21
    assert record["command"] == (out / "test" / "r18_cbam_center_seed0" / "command.txt").read_text().strip()
    assert record["command"].startswith("ferkit reproduce table5 --data")
    table = (folder / "table5.md").read_text()
    assert table.count("+/- n/a") == 3 and "budget `test`" in table and "--seeds 1" in table
    for name in ("table5_curves.png", "confusion.png", "confusion.md", "features.md", "features/fig4.png"):
        assert (folder / name).is_file(), name
    # Fig. 4: one statistics file per loss, on the 21 test images, that learned centers only with an aux loss
    infos = {name: json.loads((folder / "features" / f"{name}_seed0.json").read_text())
             for name in ("r18_cbam", "r18_cbam_center", "r18_cbam_island")}
    assert {info["n"] for info in infos.values()} == {21}
    assert "learned_center_cosine" not in infos["r18_cbam"]["stats"]
    assert "learned_center_cosine" in infos["r18_cbam_island"]["stats"]
    assert infos["r18_cbam_center"]["test_acc"] == record["test_acc"]
    assert infos["r18_cbam_center"]["training_command"] == record["command"]
    assert {"git_commit", "hardware", "wall_s", "seed", "training_command"} <= set(infos["r18_cbam"])
    assert "| center (`r18_cbam_center`) | 0 |" in (folder / "features.md").read_text()
    drawn = (folder / "features" / "fig4.png").stat().st_mtime_ns

    calls.clear()
    capsys.readouterr()
    assert main(argv) == 0
    assert calls == []  # everything finished: nothing trains the second time
    assert "3 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    assert (folder / "features" / "fig4.png").stat().st_mtime_ns == drawn  # nothing changed: not redrawn

    (out / "test" / "r18_cbam_island_seed0" / "final.json").unlink()  # stopped after its last checkpoint
    assert main(argv) == 0
    assert calls == [("r18_cbam_island_seed0", True, 0, 32)]
    assert (out / "test" / "r18_cbam_island_seed0" / "final.json").is_file()

    calls.clear()
    shutil.rmtree(out)  # a clean checkout: run folders gone, recorded figures kept
    assert main(argv) == 0
    assert calls == []
    assert (folder / "table5.md").read_text().count("+/- n/a") == 3


def test_run_folder_of_another_config_is_refused(tmp_path):
    run = tmp_path / "runs" / "cpu" / "r18_seed0"
    run.mkdir(parents=True)
    (run / "final.json").write_text(json.dumps({"config": {"epochs": 99, "stem": "imagenet", "threads": 7}}))
    with pytest.raises(FerkitError, match=r"epochs 99 \(now 8\)") as error:
        rep.reproduce("table1", tmp_path / "nodata", "cpu", 1, tmp_path / "runs", tmp_path / "results", log=print)
    assert "threads" not in str(error.value)  # where it ran is no reason to refuse


def test_cli_rejects_unknown_budget(tmp_path, capsys):
    assert main(["reproduce", "table1", "--data", str(tmp_path), "--budget", "gpu", "--seeds", "1"]) == 2
    assert "unknown budget 'gpu'; choose one of cpu, full" in capsys.readouterr().err
