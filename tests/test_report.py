import json
import shutil
from pathlib import Path

import pytest

from ferkit.engine.report import record_run, runs_table, update_readme
from ferkit.errors import FerkitError

ROOT = Path(__file__).resolve().parent.parent


def _fake_run(folder: Path, val: float, test: float) -> Path:
    folder.mkdir(parents=True)
    config = {"model": "resnet18", "attention": "cbam", "stem": "imagenet", "loss": "island"}
    (folder / "final.json").write_text(json.dumps({
        "config": config, "epochs_done": 3, "best_epoch": 2, "wall_s": 600.0, "val_acc": val, "test_acc": test,
        "seed": 7, "git_commit": "abc", "hardware": "cpu"}))
    (folder / "command.txt").write_text("ferkit train --config r18_cbam_island epochs=3\n")
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_acc": 0.3, "val_acc": 0.4, "loss": 1.5, "wall_s": 200.0 * e}) + "\n"
        for e in (1, 2, 3)))
    return folder


def test_record_and_table(tmp_path):
    out = record_run(_fake_run(tmp_path / "runs" / "a", 0.61234, 0.6) , tmp_path / "results", "fer2013")
    assert out == tmp_path / "results" / "fer2013" / "a.json"
    record = json.loads(out.read_text())
    assert record["command"].startswith("ferkit train") and [c["epoch"] for c in record["curve"]] == [1, 2, 3]
    table = runs_table(tmp_path / "results", "fer2013").splitlines()
    assert len(table) == 3
    assert "| 3 (best 2) | 10 | 61.23 | 60.00 | 7 |" in table[2]


def test_unfinished_run_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FerkitError, match="final.json"):
        record_run(tmp_path / "run", tmp_path / "results", "fer2013")


def test_update_readme_fills_blocks(tmp_path):
    record_run(_fake_run(tmp_path / "runs" / "b", 0.5, 0.45), tmp_path / "results", "fer2013")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:fer2013-runs -->\nstale\n<!-- /results:fer2013-runs -->\nend\n")
    assert update_readme(readme, tmp_path / "results")
    text = readme.read_text()
    assert "stale" not in text and "| 50.00 | 45.00 |" in text and text.endswith("end\n")
    assert not update_readme(readme, tmp_path / "results")  # idempotent


def test_unknown_block_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:nope -->\n<!-- /results:nope -->\n")
    with pytest.raises(FerkitError, match="nope"):
        update_readme(readme, tmp_path)


def test_repository_readme_is_generated_from_results(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    assert not update_readme(copy, ROOT / "results"), "README tables are stale: run `ferkit report readme`"
