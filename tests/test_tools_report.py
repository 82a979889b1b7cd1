import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ferkit.paper.records import record_run
from report import (DOCS, _class_bias_words, _trained_on, api_accuracy_table, budget_minutes, budget_pick,
                    cpu_budget_table, detector_table, finetune_recipe_table, frontier, plot_frontier, plot_serve_memory,
                    runs_table, serve_load_table, serve_memory_runs, shift_suite_table, ship_check_table,
                    update_readme)
from ferkit.errors import FerkitError

ROOT = Path(__file__).resolve().parent.parent


def _fake_run(folder: Path, val: float, test: float, wall_s: float = 600.0, init: str = "") -> Path:
    folder.mkdir(parents=True)
    config = {"model": "resnet18", "attention": "cbam", "stem": "imagenet", "loss": "island", "init": init,
              "input_size": 48, "pad": 4, "precision": "fp32"}
    (folder / "final.json").write_text(json.dumps({
        "config": config, "epochs_done": 3, "best_epoch": 2, "wall_s": wall_s, "val_acc": val, "test_acc": test,
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


@pytest.mark.parametrize("doc", DOCS)
def test_repository_readme_is_generated_from_results(tmp_path, doc):
    copy = tmp_path / doc
    shutil.copy(ROOT / doc, copy)
    assert not update_readme(copy, ROOT / "results"), f"{doc}'s tables are stale: run `python tools/report.py readme`"


def test_a_run_from_another_runs_weights_counts_both_runs_minutes(tmp_path):
    first = _fake_run(tmp_path / "runs" / "first", 0.5, 0.5, wall_s=1200.0)
    second = _fake_run(tmp_path / "runs" / "second", 0.6, 0.6, wall_s=600.0, init=str(first / "best.pt"))
    third = _fake_run(tmp_path / "runs" / "third", 0.62, 0.6, wall_s=300.0, init=str(second / "best.pt"))
    records = [json.loads(record_run(r, tmp_path / "results", "cpu_budget").read_text())
               for r in (first, second, third)]
    assert "prior_wall_s" not in records[0]
    assert records[1]["init_run"] == "first" and records[1]["prior_wall_s"] == 1200.0
    assert [budget_minutes(r) for r in records] == [20.0, 30.0, 35.0]


def test_frontier_keeps_runs_no_faster_run_beats_on_validation(tmp_path):
    runs = {"a": (10, 0.50), "b": (20, 0.48), "c": (30, 0.55), "d": (30, 0.54), "e": (70, 0.60), "f": (90, 0.59)}
    records = [{"_file": name, "wall_s": 60.0 * minutes, "val_acc": val, "test_acc": val}
               for name, (minutes, val) in runs.items()]
    assert [r["_file"] for r in frontier(records)] == ["a", "c", "e"]
    assert budget_pick(records)["_file"] == "c"          # the best within 60 minutes
    assert budget_pick(records, minutes=5) is None


def test_cpu_budget_table_and_plot(tmp_path):
    for name, wall, val in (("slow", 4000.0, 0.64), ("fast", 1200.0, 0.58), ("worse", 1800.0, 0.57)):
        record_run(_fake_run(tmp_path / "runs" / name, val, val + 0.01, wall_s=wall), tmp_path / "results",
                   "cpu_budget")
    lines = cpu_budget_table(tmp_path / "results").splitlines()
    rows = [line for line in lines if line.startswith("| [")]
    assert [row.split("]")[0][3:] for row in rows] == ["fast", "worse", "slow"]   # by minutes
    assert "yes, **60-min pick**" in rows[0] and "| 67 | 64.00 | 65.00 | yes |" in rows[2]
    assert "| 30 | 57.00 | 58.00 |  |" in rows[1]
    png = plot_frontier(tmp_path / "results")
    assert png == tmp_path / "results" / "cpu_budget" / "frontier.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_frontier(tmp_path / "empty") is None


def test_model_card_lineage_lists_every_run_a_model_started_from():
    from report import _lineage

    train = {"wall_s": 600.0, "started_from": {"command": "ferkit train B", "epochs_done": 5, "wall_s": 1200.0,
                                               "val_acc": 0.5, "test_acc": 0.55,
                                               "started_from": {"command": "ferkit train A", "wall_s": 1800.0}}}
    rows = _lineage(train)
    assert [k for k, _ in rows] == ["started from", "started from",
                                    "training time, with the runs it started from"]
    assert rows[0][1].startswith("`ferkit train B`: 5 epochs, 20 min, val 50.00 %, test 55.00 %")
    assert "`ferkit train A`" in rows[1][1] and rows[2][1] == "60 min"
    assert _lineage({"wall_s": 60.0}) == []
    taught = _lineage({**train, "config": {"teacher": ["default"]}})
    assert taught[2] == ("training time, with the runs it started from and its teachers' runs",
                         "60 min (some teacher models' own training not counted)")


def test_model_card_lineage_counts_each_teacher_run_once():
    from report import _lineage

    base = {"command": "ferkit train A", "git_commit": "a", "epochs_done": 45, "wall_s": 6000.0}
    student = {"command": "ferkit train S", "git_commit": "s", "wall_s": 1200.0, "started_from": base,
               "config": {"teacher": ["default", "runs/r/best.pt"]},
               "teachers": [{"teacher": "default", **base}, {"teacher": "runs/r/best.pt"}]}
    wild = {"teacher": "wild", "command": "ferkit train W", "git_commit": "w", "wall_s": 600.0, "started_from": base}
    train = {"wall_s": 3000.0, "config": {"teacher": ["default", "wild"]},
             "teachers": [{"teacher": "default", **student}, wild]}
    rows = dict(_lineage(train))
    assert list(rows) == ["teacher `default`", "teacher `wild`", "training time, with its teachers' runs"]
    assert rows["teacher `default`"].startswith("`ferkit train S`: ? epochs, 20 min")
    assert "; started from `ferkit train A`: 45 epochs, 100 min" in rows["teacher `default`"]
    assert rows["teacher `default`"].endswith("its teachers: `default`, `runs/r/best.pt`")
    # A (shared by both teachers) counts once: 3000 + 1200 + 6000 + 600 s; runs/r has no record
    assert rows["training time, with its teachers' runs"] == (
        "180 min (some teacher models' own training not counted)")


def test_predict_compare_table_sets_the_tools_side_by_side(tmp_path):
    from report import predict_compare_table

    assert predict_compare_table(tmp_path).startswith("_not measured yet")
    (tmp_path / "predict_speed.json").write_text(json.dumps({"command": "speed", "git_commit": "abc", "figures": [
        {"figure": "photo_ms", "value": 20.0, "tool": "ferkit"}, {"figure": "photo_ms", "value": 25.0, "tool": "fer"},
        {"figure": "photos_one_face", "value": 4, "on_target": 4, "photos": 5, "tool": "ferkit"},
        {"figure": "photos_one_face", "value": 3, "on_target": 3, "photos": 5, "tool": "fer"}]}))
    (tmp_path / "fer_accuracy.json").write_text(json.dumps({"command": "acc", "git_commit": "abc", "figures": [
        {"tool": "fer", "setting": "crop_only", "accuracy": 0.6}, {"tool": "ferkit", "accuracy": 0.7}]}))
    lines = predict_compare_table(tmp_path).splitlines()
    assert lines[2] == "| FER2013 PrivateTest accuracy | 70.00 % | 60.00 % (crop only) |"
    assert lines[3].endswith("| 20.0 | 25.0 |") and lines[4] == "| ferkit / fer time | 0.80 | |"
    assert lines[5] == "| photos whose one face was found | 4 of 5 | 3 of 5 |"


def test_api_accuracy_table_from_json(tmp_path):
    assert "not measured yet" in api_accuracy_table(tmp_path)
    figure = {"split": "PrivateTest", "images": 10, "backend": "onnx", "tta": "flip", "accuracy": 0.7,
              "mean_class_accuracy": 0.65, "macro_f1": 0.6612, "per_class_accuracy": {"angry": 0.5, "happy": 0.9}}
    (tmp_path / "api_accuracy.json").write_text(json.dumps(
        {"command": "python benchmarks/api_accuracy.py", "git_commit": "0123456789abc", "figures": [figure]}))
    lines = api_accuracy_table(tmp_path).splitlines()
    assert lines[0] == "| split | images | accuracy | mean per-class | macro-F1 | angry | happy |"
    assert lines[2] == "| PrivateTest | 10 | 70.00 | 65.00 | 0.661 | 50.00 | 90.00 |"
    assert "0123456789" in lines[-1] and "0123456789a" not in lines[-1]


def test_readme_blocks_show_no_machine_paths():
    from report import portable

    assert portable("ferkit train --data ../shared/data/fer2013 --fer-python /work/fer-venv/bin/python") == \
        "ferkit train --data path/to/fer2013 --fer-python path/to/fer-venv/bin/python"
    assert "../shared/data" not in (ROOT / "README.md").read_text()


def test_detector_table_sets_detectors_side_by_side(tmp_path):
    assert "not measured yet" in detector_table(tmp_path)
    run = {"photos_per_condition": 4, "group_frames": 1, "backgrounds": 8, "seed": 1, "detectors": {
        "blazeface": {"recall": {"upright": 1.0, "group": 0.9333}, "false_faces": 0, "ms_per_photo": 18.7},
        "haar": {"recall": {"upright": 0.5, "group": 0.0}, "false_faces": 2, "ms_per_photo": 9.1}}}
    (tmp_path / "detector_recall.json").write_text(json.dumps(
        {"command": "python benchmarks/detector_recall.py", "git_commit": "0123456789abc", "hardware": "cpu",
         "figures": [run]}))
    lines = detector_table(tmp_path).splitlines()
    assert lines[0] == "| faces found | blazeface | haar |"
    assert lines[2:4] == ["| upright | 100.00 % | 50.00 % |", "| group | 93.33 % | 0.00 % |"]
    assert lines[4] == "| false faces on 8 backgrounds | 0 | 2 |" and lines[5] == "| ms per 640x480 photo | 18.7 | 9.1 |"
    assert "seed 1" in lines[-1] and "0123456789" in lines[-1]
    for n, d in enumerate(run["detectors"].values()):  # a record with faces found where none was put
        d["extra_faces"] = 3 * n
    (tmp_path / "detector_recall.json").write_text(json.dumps({"figures": [run]}))
    assert "| extra faces in the portraits and group frames | 0 | 3 |" in detector_table(tmp_path).splitlines()


def test_shift_suite_table_names_a_column_by_run_folder_or_model_file(tmp_path):
    folder = tmp_path / "shift_suite"
    folder.mkdir()
    for n, model in enumerate(("default", "runs/s1/best.pt", "runs/pair.safetensors")):
        figures = [{"model": model, "set": "fer2013_val", "shift": shift, "accuracy": accuracy, "drop": 0.7 - accuracy,
                    "images": 10}
                   for shift, accuracy in (("none", 0.7), ("bright", 0.6))]
        (folder / f"{n}.json").write_text(json.dumps({"command": "python benchmarks/shift_suite.py",
                                                      "figures": figures}))
    header = shift_suite_table(tmp_path).splitlines()[0]
    assert header == "| shift | default: fer2013_val | s1: fer2013_val | pair: fer2013_val |"


def test_shift_suite_table_keeps_a_replaced_shipped_model_apart_by_its_label(tmp_path):
    # two records of "default", measured before and after the shipped file changed: two columns, not one
    folder = tmp_path / "shift_suite"
    folder.mkdir()
    for name, label, accuracy in (("old", "v1", 0.7), ("new", None, 0.6)):
        figures = [{"model": "default", "set": "fer2013_val", "shift": shift, "accuracy": accuracy - drop,
                    "drop": drop, "images": 10} for shift, drop in (("none", 0.0), ("bright", 0.1))]
        (folder / f"{name}.json").write_text(json.dumps({"figures": figures, **({"label": label} if label else {})}))
    table = shift_suite_table(tmp_path).splitlines()
    assert table[0] == "| shift | default: fer2013_val | v1: fer2013_val |"
    assert table[2] == "| none | 60.00 | 70.00 |" and table[3] == "| bright | 50.00 (-10.0) | 60.00 (-10.0) |"


def test_ship_check_table_shows_every_check_oldest_first_against_the_default_of_its_commit(tmp_path):
    assert "not measured yet" in ship_check_table(tmp_path)

    def side(accuracy, only_it, only_base, p):
        return {"accuracy": accuracy, "baseline_accuracy": 0.7, "faces": 100, "only_candidate_right": only_it,
                "only_baseline_right": only_base, "p": p}

    for name, commit, date, model in (("ship_check_new", "bbbbbbbbbbbb", "2026-12-02", "/tmp/cand/b.safetensors"),
                                      ("ship_check", "aaaaaaaaaaaa", "2026-12-01", "wild")):
        figure = {"baseline": "default", "model": model, "alpha": 0.05, "qualifies": model == "wild",
                  "fer2013_val": side(0.71, 12, 2, 0.0129), "ferplus_val": side(0.8, 30, 1, 0.0)}
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"command": f"python benchmarks/ship_check.py --out {name}.json", "git_commit": commit, "date": date,
             "hardware": "cpu", "figures": [figure]}))
    table = ship_check_table(tmp_path).splitlines()
    assert table[2] == ("| wild | `default` at aaaaaaaaaa | 71.00 (70.00) | 12 / 2, 0.0129 | 80.00 (70.00) | "
                        "30 / 1, < 0.0001 | yes |")
    assert table[3].startswith("| b | `default` at bbbbbbbbbb |") and table[3].endswith("| no |")
    assert table[-1].index("at commit aaaaaaaaaa") < table[-1].index("at commit bbbbbbbbbb")


def test_serve_load_table_has_a_row_per_workload_and_mode(tmp_path):
    assert "not measured yet" in serve_load_table(tmp_path)
    figures = [{"figure": name, "value": value, "mode": mode, "workload": workload, "clients": 16, "seconds": 60.0}
               for workload, rates in (("photos", (46.3, 69.5)), ("crops", (130.0, 195.0)))
               for mode, rate in zip(("no_batching", "batching"), rates)
               for name, value in (("requests_per_s", rate), ("faces_per_s", rate), ("latency_p50", 300.0),
                                   ("latency_p99", 400.0), ("errors", 0), ("images_per_model_call", 8.0),
                                   ("server_cpu_ms_per_request", 40.0), ("server_cores_busy", 1.9),
                                   ("rss_start", 800.0), ("rss_end", 810.0))]
    figures += [{"figure": "requests_per_s_ratio", "value": 1.5, "workload": w, "mode": "batching"}
                for w in ("photos", "crops")]
    (tmp_path / "serve_load.json").write_text(json.dumps(
        {"command": "python benchmarks/serve_load.py", "git_commit": "0123456789abc", "hardware": "cpu",
         "figures": figures}))
    lines = serve_load_table(tmp_path).splitlines()
    assert lines[2] == "| photos | no batching | 46.3 | 46.3 | 300.0 | 400.0 | 0 | 8.0 | 40.0 | 1.9 | 800.0 -> 810.0 |"
    assert lines[3].startswith("| photos | batching | 69.5 |")
    assert lines[4].startswith("| crops | no batching | 130.0 |") and lines[5].startswith("| crops | batching | 195.0 |")
    assert "16 clients, 60 s per row" in lines[-1]
    assert "photos batching / no batching 1.5x, crops batching / no batching 1.5x" in lines[-1]


def test_serve_memory_plot_draws_each_run(tmp_path):
    assert plot_serve_memory(tmp_path) is None
    series = {"photos": {"batching": [[0.0, 700.0], [1.0, 710.0]], "no_batching": [[0.0, 650.0], [1.0, 652.0]]},
              "crops": {"batching": [], "no_batching": [[0.0, 600.0]]}}
    record = {"figures": [], "rss_series_mb": series}
    assert [(w, m, len(p)) for w, m, p in serve_memory_runs(record)] == [
        ("photos", "batching", 2), ("photos", "no_batching", 2), ("crops", "no_batching", 1)]
    old = serve_memory_runs({"rss_series_mb": {"batching": [[0.0, 1.0]]}})  # before workloads: photos only
    assert old == [("photos", "batching", [[0.0, 1.0]])]
    (tmp_path / "serve_load.json").write_text(json.dumps(record))
    picture = plot_serve_memory(tmp_path)
    assert picture == tmp_path / "serve_load.png"
    image = Image.open(picture)
    assert image.format == "PNG" and image.size[0] > 300


def test_reproduce_block_shows_tables_1_and_5_and_fig4_as_far_as_run(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:reproduce-cpu -->\n<!-- /results:reproduce-cpu -->\n")
    update_readme(readme, tmp_path / "results")
    assert "_Not run yet: no runs in results/reproduce/cpu/." in readme.read_text()
    folder = tmp_path / "results" / "reproduce" / "cpu"
    folder.mkdir(parents=True)
    record = {"config": {}, "seed": 0, "epochs_done": 8, "best_epoch": 6, "wall_s": 1500.0, "val_acc": 0.55,
              "test_acc": 0.60, "hardware": "test CPU", "reproduce": {"row": "r18", "budget": "cpu", "data": "/data/fer2013",
                                                                       "out": "runs/reproduce", "results": "results/reproduce"}}
    (folder / "r18_seed0.json").write_text(json.dumps(record))
    assert update_readme(readme, tmp_path / "results")
    text = readme.read_text()
    assert "**Table 1: attention" in text and "**Table 5: loss functions**" in text and "60.00 +/- n/a" in text
    assert "Fig. 4" not in text  # no feature statistics yet

    (folder / "features").mkdir()
    stats = {"intra_inter_ratio": 0.9114, "center_cosine": 0.7671, "center_cosine_centred": -0.0151,
             "learned_center_cosine": 0.0123}
    info = {"row": "r18_cbam_center", "seed": 0, "test_acc": 0.4862, "n": 3000, "split": "test", "method": "pca",
            "stats": stats}
    (folder / "features" / "r18_cbam_center_seed0.json").write_text(json.dumps(info))
    (folder / "features" / "fig4.png").write_bytes(b"\x89PNG")
    assert update_readme(readme, tmp_path / "results")
    text = readme.read_text()
    assert "**Fig. 4: the feature space**" in text and "3000 test-split images" in text and "by PCA" in text
    assert "| center (`r18_cbam_center`) | 0 | 48.62 | 0.911 | 0.767 | -0.015 | 0.012 |" in text
    assert "](results/reproduce/cpu/features/fig4.png)" in text  # relative to the README


def test_finetune_recipe_table_has_a_row_per_recipe_from_every_sweep(tmp_path):
    assert "not measured yet" in finetune_recipe_table(tmp_path)
    folder = tmp_path / "finetune_recipe"
    folder.mkdir()

    def run(recipe, subset, acc, epoch=3):
        return {"recipe": recipe, "subset": subset, "accuracy": acc, "mean_class_accuracy": acc - 0.1,
                "best_epoch": epoch}

    first = [{"recipe": "none", "subset": "all", "accuracy": 0.6, "mean_class_accuracy": 0.55},
             run("a", 0, 0.8), run("a", 1, 0.7, 5),
             {"recipe": "a", "subset": "mean", "overrides": ["lr=0.02"], "accuracy": 0.75, "accuracy_std": 0.0707,
              "mean_class_accuracy": 0.65}]
    second = [{"recipe": "none", "subset": "all", "accuracy": 0.6, "mean_class_accuracy": 0.55}, run("b", 0, 0.9),
              {"recipe": "b", "subset": "mean", "overrides": ["freeze=2"], "accuracy": 0.9, "accuracy_std": 0.0,
               "mean_class_accuracy": 0.8, "last_epoch_accuracy": 0.85}]
    common = {"subsets": 2, "size": 900, "holdout": 1000, "init": "default", "seed": 0, "hardware": "cpu"}
    (folder / "1.json").write_text(json.dumps({**common, "command": "python one", "git_commit": "0123456789abc",
                                               "figures": first}))
    (folder / "2.json").write_text(json.dumps({**common, "base": "finetune", "command": "python two",
                                               "git_commit": "fedcba9876543", "figures": second}))
    lines = finetune_recipe_table(tmp_path).splitlines()
    assert lines[2] == "| none: the init model as it is | | 60.00 | 55.00 | | | |"
    assert lines[3] == "| a | `lr=0.02` | 75.00 +/- 7.07 | 65.00 | 80.00, 70.00 | 3, 5 | - |"
    assert lines[4] == "| b | `freeze=2` | 90.00 +/- 0.00 | 80.00 | 90.00 | 3 | 85.00 |"
    assert "`python one` (overrides of the 'defaults' config) at commit 0123456789" in lines[-1]
    assert "`python two` (overrides of the 'finetune' config) at commit fedcba9876" in lines[-1]


def test_trained_on_names_the_labels_and_any_teachers():
    plain = _trained_on({})
    assert plain.startswith("FER2013 Training split") and "distilled" not in plain
    taught = _trained_on({"teacher": ["default", "runs/s1/best.pt"], "teacher_mix": 0.7})
    assert taught.startswith(plain)
    assert "distilled: 70% of the target" in taught and "teacher models default, s1 " in taught
    # a shipped name means the file of that name when the run trained, which a later default may have replaced
    dated = _trained_on({"teacher": ["default", "runs/s1/best.pt"]}, "0123456789abcdef")
    assert "teacher models default (as shipped at commit 0123456789), s1 " in dated


def test_the_card_says_no_class_bias_when_the_fit_chose_tau_zero():
    assert _class_bias_words(0.0).startswith("none") and "-0" not in _class_bias_words(0.0)
    assert _class_bias_words(0.1).startswith("-0.1 x log(training prior)")
    assert _class_bias_words(0.5).startswith("-0.5 x")
