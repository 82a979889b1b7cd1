import copy
import itertools
import json
import math
import re

import pytest
import torch

from ferkit.cli import main
from ferkit.config import load_config
from ferkit.engine.modelfile import load, load_checkpoint
from ferkit.data import FERDataset
from ferkit.engine.train import Trainer, epochs_that_fit, lr_factor, soft_targets, train
from ferkit.models import SEModule

from conftest import FAST, fake_training_clock, write_kaggle_tree

def test_lr_schedule_warmup_cosine_and_multistep():
    cfg = load_config(None, {"epochs": 10, "warmup_epochs": 1.0})
    assert lr_factor(0, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 10, cfg) == pytest.approx(0.5)  # half-way through the cosine part
    assert lr_factor(100, 10, cfg) == pytest.approx(0.0)
    step = load_config(None, {"epochs": 10, "warmup_epochs": 0.0, "schedule": "multistep",
                              "milestones": [0.5, 0.8], "gamma": 0.1})
    assert [lr_factor(s, 10, step) for s in (0, 49, 50, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize("loss, mixing", [("softmax", {}), ("island", {}),
                                          ("island", {"mixup": 0.4, "cutmix": 1.0, "mix_prob": 0.7})])
def test_resumed_run_ends_with_the_same_weights(tiny_splits, tmp_path, loss, mixing):
    cfg = load_config("r18_cbam", {**FAST, "loss": loss, **mixing})
    whole = train(cfg, tiny_splits, tmp_path / "whole", progress=False, log=lambda s: None)
    train(cfg, tiny_splits, tmp_path / "broken", stop_after=1, progress=False, log=lambda s: None)
    assert load_checkpoint(tmp_path / "broken" / "last.pt")["epoch"] == 1
    resumed = train(cfg, tiny_splits, tmp_path / "broken", resume=True, progress=False, log=lambda s: None)
    assert resumed.epochs_done == whole.epochs_done == 2
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "broken" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["criterion"]:
        assert torch.equal(a["criterion"][key], b["criterion"][key]), key
    if loss == "island":  # the centers take the feature size from the model: 64 for resnet_tiny, not 512
        assert a["criterion"]["aux.centers"].shape == (7, 64)
    lines = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_training_learns_the_generated_task(tiny_splits, tmp_path):
    # no crop shifts: the class is the row of a band, which a shift would move
    cfg = load_config("r18", {**FAST, "epochs": 8, "attention": "none", "pad": 0})
    result = train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    assert result.best_val_acc > 0.5  # chance is 1/7
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["test_acc"] == result.test_acc and final["seed"] == 0 and final["epochs_done"] == 8


def test_cli_train_then_evaluate_reproduces_reported_accuracy(tmp_path, capsys):
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 12, "PublicTest": 4, "PrivateTest": 4})
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in FAST.items()] + ["epochs=1", "precision=bf16", "input_size=48"]
    assert main(["train", "--config", "r18_cbam_island", "--data", str(data), "--out", str(run),
                 "--no-progress", *overrides]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["epochs_done"] == 1
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl", "test_report.json", "test_report.png",
                 "test_report_reliability.png", "curves.png"):  # the pictures beside the run they belong to
        assert (run / name).is_file(), name
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split", "test", "--no-progress"]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["report"]["accuracy"] == final["test_acc"]
    assert evaluated["report"]["n"] == 28
    assert "| angry |" in capsys.readouterr().out


def test_without_matplotlib_reports_are_written_and_drawing_says_what_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    data = write_kaggle_tree(tmp_path / "fer", {"Training": 6, "PublicTest": 2, "PrivateTest": 2})
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in FAST.items()] + ["epochs=1", "input_size=48"]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a machine without the plots extra
                        lambda name, *args: None if name.split(".")[0] == "matplotlib" else find_spec(name, *args))
    assert main(["train", "--config", "r18", "--data", str(data), "--out", str(run), "--no-progress", *overrides]) == 0
    assert (run / "test_report.json").is_file() and (run / "test_report.md").is_file()
    assert not (run / "test_report.png").exists()
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (run / "eval_test.md").is_file() and not (run / "eval_test.png").exists()
    assert 'for the pictures: pip install "ferkit[plots]"' in out and not (run / "curves.png").exists()
    assert main(["plot", "curves", str(run), "--out", str(tmp_path / "curves.png")]) == 2
    assert capsys.readouterr().err.strip() == ('ferkit: error: drawing figures needs matplotlib: '
                                               'pip install "ferkit[plots]"')
    assert not (tmp_path / "curves.png").exists()


def test_checkpoint_of_another_model_is_a_clear_error(tiny_splits, tmp_path, capsys):
    cfg = load_config("r18", {**FAST, "epochs": 1})
    train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    state["meta"]["attention"] = "cbam"  # weights of a plain ResNet described as a CBAM one
    torch.save(state, tmp_path / "other.pt")
    assert main(["evaluate", str(tmp_path / "other.pt"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "other.pt" in err and "does not match" in err and "Traceback" not in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(tmp_path / "junk.pt"), "--data", str(tmp_path)]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_cli_bad_inputs_one_line_no_traceback(tmp_path, capsys):
    assert main(["train", "--config", "r18", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing half-written
    assert main(["train", "--config", "r18", "--data", str(tmp_path), "epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_loaded_model_round_trips(tiny_splits, tmp_path):
    cfg = load_config("r18_se", {**FAST, "epochs": 1})
    trainer = Trainer(cfg, tiny_splits, tmp_path / "run", log=lambda s: None, progress=False)
    trained = []
    real_finish = trainer.finish

    def finish_keeping_the_trained_model():
        # the model as training left it, before finish() reloads best.pt into the trainer (one epoch: the best)
        trained.append(copy.deepcopy(trainer.model).to(memory_format=torch.contiguous_format).eval())
        return real_finish()

    trainer.finish = finish_keeping_the_trained_model
    trainer.fit()
    (saved,) = trained
    model, meta = load(tmp_path / "run" / "best.pt")
    assert meta.attention == "se" and meta.classes[6] == "neutral" and not model.training
    assert sum(isinstance(m, SEModule) for m in model.modules()) == 4  # one per block of resnet_tiny
    expected, loaded = saved.state_dict(), model.state_dict()
    assert list(loaded) == list(expected)
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, logits = model(x, return_features=True)
        saved_features, saved_logits = saved(x, return_features=True)
    assert features.shape == (5, 64) and logits.shape == (5, 7)
    # the same weights and input through the same ops on the same threads: equal to the last bit
    torch.testing.assert_close(features, saved_features, rtol=0, atol=0)
    torch.testing.assert_close(logits, saved_logits, rtol=0, atol=0)


def test_time_limit_stops_between_epochs(tiny_splits, tmp_path):
    cfg = load_config("r18", {**FAST, "epochs": 5, "time_limit_min": 1e-6})
    result = train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    assert result.epochs_done == 1  # the first epoch always runs; the next would pass the limit
    assert (tmp_path / "run" / "final.json").is_file()


def test_a_schedule_cut_to_fewer_epochs_ends_with_them():
    cfg = load_config(None, {"epochs": 20, "warmup_epochs": 1.0})
    assert lr_factor(55, 10, cfg, epochs=10) == pytest.approx(0.5)  # half-way through a 10-epoch cosine
    assert lr_factor(100, 10, cfg, epochs=10) == pytest.approx(0.0)
    assert lr_factor(55, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 190)))  # the config's 20
    assert lr_factor(5, 10, cfg, epochs=10) == lr_factor(5, 10, cfg) == pytest.approx(0.6)  # the warmup is the same


@pytest.mark.parametrize("limit_s, wall_s, epoch, epochs_s, planned, fits", [
    (3600, 250, 1, 200, 24, 17),    # 50 s of teachers, then 200 s an epoch: 16 more fit in the 3,350 s left
    (3600, 250, 1, 200, 10, 10),    # never more than planned
    (3600, 3500, 10, 3450, 24, 10),  # nothing more fits: those done
    (3600, 3700, 10, 3700, 24, 10),  # past the limit already: never fewer than those done
    (3600, 0, 0, 0.0, 24, 24),      # before the first epoch there is no pace to plan by
    (60, 15, 1, 15, 10, 4),         # exactly three more
])
def test_epochs_that_fit_the_limit_at_the_pace_so_far(limit_s, wall_s, epoch, epochs_s, planned, fits):
    assert epochs_that_fit(limit_s, wall_s, epoch, epochs_s, planned) == fits


def test_epochs_that_fit_go_by_the_last_epoch_where_it_was_slower_than_the_mean():
    # runs/cpu60_fit on a 2-core CPU: 13 epochs in 3,316 s (255 s each), the 13th 288 s. At the mean pace one more
    # fits (3,571 s); the time limit, judging by the 13th, stops the run before it.
    assert epochs_that_fit(3600, 3316, 13, 3316, 24) == 14
    assert epochs_that_fit(3600, 3316, 13, 3316, 24, last_s=288) == 13
    assert epochs_that_fit(3600, 3028, 12, 3028, 24, last_s=236) == 14  # a faster last epoch: the mean decides


def _fake_clock(monkeypatch, step_s):
    """The training module's clock advancing ``step_s`` seconds at each reading: an epoch reads it 4 times."""
    fake_training_clock(monkeypatch, range(0, 10**9, step_s))


@pytest.mark.parametrize("fit_time", [False, True])
def test_fit_time_ends_the_schedule_within_the_limit(tiny_splits, tmp_path, monkeypatch, fit_time):
    _fake_clock(monkeypatch, 5)  # 15 s an epoch: 4 of the 10 fit in a minute
    cfg = load_config("r18", {**FAST, "epochs": 10, "time_limit_min": 1.0, "fit_time": fit_time})
    lines: list[str] = []
    result = train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lines.append)
    assert result.epochs_done == 4
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    if fit_time:  # the cosine reaches 0 at the end of the fourth epoch
        assert metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and final["epochs_planned"] == 4
        assert "fit_time: 4 of 10 epochs fit in 1 min at 15 s an epoch; the schedule now ends after epoch 4" in lines
        assert any(line.startswith("epoch 2/4 ") for line in lines)
    else:  # the limit stops the run 35 % into a 10-epoch cosine, the learning rate still high
        peak = cfg.lr * cfg.batch_size / 128
        assert metrics[-1]["lr"] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 3.5 / 9.5)))
        assert final["epochs_planned"] == 10


def test_a_run_that_fits_its_time_resumes_as_it_would_have_gone_on(tiny_splits, tmp_path, monkeypatch):
    cfg = load_config("r18", {**FAST, "epochs": 10, "time_limit_min": 1.0, "fit_time": True})
    _fake_clock(monkeypatch, 5)
    train(cfg, tiny_splits, tmp_path / "whole", progress=False, log=lambda s: None)
    _fake_clock(monkeypatch, 5)
    train(cfg, tiny_splits, tmp_path / "broken", stop_after=2, progress=False, log=lambda s: None)
    assert load_checkpoint(tmp_path / "broken" / "last.pt")["epochs_planned"] == 4
    _fake_clock(monkeypatch, 5)
    resumed = train(cfg, tiny_splits, tmp_path / "broken", resume=True, progress=False, log=lambda s: None)
    assert resumed.epochs_done == 4
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "broken" / "last.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_run_without_fit_time_resumed_with_more_epochs_trains_them(tiny_splits, tmp_path):
    train(load_config("r18", {**FAST, "epochs": 1}), tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    more = load_config("r18", {**FAST, "epochs": 2})
    resumed = train(more, tiny_splits, tmp_path / "run", resume=True, progress=False, log=lambda s: None)
    assert resumed.epochs_done == 2


def test_soft_labels_are_the_training_targets(tiny_splits, tmp_path):
    # Soft labels that put all their mass on one class the hard labels never name: a model trained
    # on them must predict that class, so the votes, not the hard labels, were the targets.
    import dataclasses

    from ferkit.errors import FerkitError

    cfg = load_config("r18_cbam", {**FAST, "soft_labels": True, "epochs": 3, "lr": 0.05})
    with pytest.raises(FerkitError, match="no soft labels"):
        train(cfg, tiny_splits, tmp_path / "none", progress=False, log=lambda s: None)
    assert not (tmp_path / "none").exists()
    soft = torch.zeros(len(tiny_splits["train"]), 7)
    soft[:, 3] = 1.0
    splits = {**tiny_splits, "train": dataclasses.replace(tiny_splits["train"], soft_labels=soft)}
    train(cfg, splits, tmp_path / "soft", progress=False, log=lambda s: None)
    model, meta = load(tmp_path / "soft" / "best.pt")
    from ferkit.engine.inference import predict_logits
    preds = predict_logits(model, tiny_splits["val"].images, meta, "none", precision="fp32",
                           channels_last=False).argmax(1)
    assert (preds == 3).float().mean() > 0.9


def test_diverging_run_stops_with_a_clear_error_and_no_nan_checkpoint(tiny_splits, tmp_path):
    import dataclasses

    from ferkit.errors import FerkitError

    # lr above the config's limit, set past load_config as a caller of the Python API can
    cfg = dataclasses.replace(load_config("r18", {**FAST, "epochs": 2}), lr=100000.0)
    with pytest.raises(FerkitError, match=r"epoch 1: training diverged .*lower the learning rate \(lr=100000\)"):
        train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "final.json").exists()


@pytest.mark.parametrize("crash", ["before", "after"])
def test_crash_around_last_pt_keeps_one_metrics_line_per_epoch(tiny_splits, tmp_path, monkeypatch, crash):
    import ferkit.engine.train as train_module

    real_save = train_module.save_checkpoint

    def killed_at_epoch_2(path, state):
        if path.name == "last.pt" and state["epoch"] == 2:
            if crash == "after":
                real_save(path, state)  # killed after last.pt is in place
            raise KeyboardInterrupt
        real_save(path, state)

    cfg = load_config("r18", {**FAST, "epochs": 2})
    monkeypatch.setattr(train_module, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    (tmp_path / "run" / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    resumed = train(cfg, tiny_splits, tmp_path / "run", resume=True, progress=False, log=lambda s: None)
    assert resumed.epochs_done == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert not (tmp_path / "run" / ".last.pt.k1ll3d.tmp").exists()  # the killed write's temp file is gone


def test_cli_train_refuses_an_earlier_runs_folder_and_resume_with_config(tmp_path, capsys):
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 4, "PublicTest": 2, "PrivateTest": 2})
    for name in ("best.pt", "metrics.jsonl", "final.json"):
        run = tmp_path / f"old_{name}"
        run.mkdir()
        (run / name).write_text("kept")
        assert main(["train", "--config", "r18", "--data", str(data), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"holds {name} of an earlier run but no last.pt" in err and len(err.strip().splitlines()) == 1
        assert [p.name for p in run.iterdir()] == [name] and (run / name).read_text() == "kept"
    done = tmp_path / "done"
    done.mkdir()
    (done / "last.pt").write_bytes(b"")
    (done / "config.yaml").write_text("epochs: 1\n")
    assert main(["train", "--resume", str(done), "--config", "r18", "--data", str(data)]) == 2
    assert "leave out config (--config)" in capsys.readouterr().err


def test_empty_data_path_is_an_error_not_the_current_folder(tmp_path, monkeypatch, capsys):
    write_kaggle_tree(tmp_path, {"Training": 4, "PublicTest": 2, "PrivateTest": 2})  # '' would read this
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FERKIT_DATA", str(tmp_path))
    args = ["train", "--config", "r18", "--data", "", "--out", str(tmp_path / "run"), "--no-progress",
            *(f"{k}={v}" for k, v in FAST.items()), "epochs=1"]
    assert main(args) == 2
    assert "--data is empty" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_cli_export_fits_class_bias_and_temperature_on_val(tmp_path, capsys):
    from ferkit.engine.evaluate import evaluate
    from ferkit.data import load_dataset

    data = write_kaggle_tree(tmp_path / "fer", {"Training": 10, "PublicTest": 4, "PrivateTest": 4})
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in FAST.items()] + ["epochs=1"]
    assert main(["train", "--config", "r18", "--data", str(data), "--out", str(run), "--no-progress", *overrides]) == 0
    assert load_checkpoint(run / "best.pt")["meta"]["class_counts"] == [10] * 7  # the training prior
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run / "best.pt"), "--data", str(data), "--out", str(out), "--weights", "fp32",
                 "--no-progress"]) == 0
    model, meta = load(out)
    cal = meta.info["calibration"]
    assert len(meta.class_bias) == 7 and tuple(cal["class_bias"]) == meta.class_bias
    assert cal["class_bias_tau"] >= 0 and meta.temperature > 0
    # a balanced prior gives no bias, whatever tau was chosen
    assert meta.class_bias == pytest.approx([0.0] * 7, abs=1e-6)
    test = load_dataset(data, splits=("test",), progress=False)["test"]
    report, _ = evaluate(model, test, meta, meta.tta, precision="fp32", channels_last=False)
    assert report.accuracy == pytest.approx(meta.info["test_acc"])
    assert report.mean_class_accuracy == pytest.approx(meta.info["test_mean_class_acc"])
    assert main(["export", str(run / "best.pt"), "--data", str(data), "--out", str(tmp_path / "plain.safetensors"),
                 "--no-class-bias", "--no-progress"]) == 0
    assert load(tmp_path / "plain.safetensors")[1].class_bias is None
    capsys.readouterr()


def test_soft_targets_mix_votes_with_the_one_hot_label():
    votes = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    data = FERDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a", "b", "c"), "train",
                      "fixture", soft_labels=votes)
    mixed = soft_targets(data, 0.25)
    assert torch.allclose(mixed, torch.tensor([[0.875, 0.125, 0.0], [0.0, 0.75, 0.25]]))
    assert torch.equal(soft_targets(data, 1.0), votes)
    assert torch.allclose(mixed.sum(dim=1), torch.ones(2))


def test_bf16_on_a_cpu_without_it_trains_in_fp32_and_says_so(tiny_splits, tmp_path, monkeypatch):
    # On an AVX2 CPU oneDNN has no bf16 kernels: a bf16 ResNet step ran ~100x slower than fp32 there.
    from ferkit.engine import runtime
    from ferkit.engine import train as train_module

    used = []
    real = train_module.autocast
    monkeypatch.setattr(train_module, "autocast", lambda device, precision: used.append(precision) or
                        real(device, precision))
    monkeypatch.setattr(runtime, "native_half", lambda dtype: False)
    lines = []
    cfg = load_config("r18", {**FAST, "epochs": 1, "precision": "bf16"})
    train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lines.append)
    assert set(used) == {"fp32"}
    assert any("no native bf16 arithmetic" in line and "computes in fp32" in line for line in lines)

    used.clear()
    monkeypatch.setattr(runtime, "native_half", lambda dtype: True)
    train(cfg, tiny_splits, tmp_path / "run2", progress=False, log=lines.append)
    assert set(used) == {"bf16"}


def test_train_out_onto_a_file_is_refused_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    from ferkit.engine import train as train_module

    read = []
    monkeypatch.setattr(train_module, "load_training_data", lambda *a, **k: read.append(a) or {})
    existing = tmp_path / "notes.txt"
    existing.write_text("mine\n")
    for out in (existing, existing / "run"):
        assert main(["train", "--config", "r18", "--data", str(tmp_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "not a folder" in err, err
    assert read == [] and existing.read_text() == "mine\n"


def test_an_auxiliary_loss_shows_its_parts_beside_the_total(tiny_splits, tmp_path):
    # On raw features the island term is in the hundreds: the epoch line says what the total is made of.
    lines = []
    cfg = load_config("r18_cbam_island", {**FAST, "epochs": 1, "aux_normalize": False})
    train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lines.append)
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    total, softmax, aux = (float(v) for v in re.search(
        r"loss ([\d.]+) \(softmax ([\d.]+) \+ 0\.5 x island ([\d.e+]+)\)", epoch).groups())
    assert total == pytest.approx(softmax + 0.5 * aux, rel=1e-3)
    plain = []
    train(load_config("r18", {**FAST, "epochs": 1}), tiny_splits, tmp_path / "plain", progress=False,
          log=plain.append)
    assert "softmax" not in next(line for line in plain if line.startswith("epoch 1/1"))


def test_evaluate_scores_every_image_of_a_labelled_folder_with_split_all(tiny_splits, tmp_path, capsys):
    from conftest import write_kaggle_tree

    cfg = load_config("r18", {**FAST, "epochs": 1})
    train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 3, "PublicTest": 1, "PrivateTest": 2})
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--data", str(data), "--split", "all",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "eval_all.json").read_text())["report"]["n"] == 7 * 6  # 42 images
    out = capsys.readouterr().out
    assert "every image of the data set" in out and "all: all:" not in out
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--data", str(data), "--no-progress"]) == 0
    assert "test: test:" not in capsys.readouterr().out  # the note names its split once


def test_progress_bars_stay_out_of_a_log_file(tmp_path, capsys, monkeypatch):
    # `ferkit train ... 2> train.log` (or under nohup): the error stream is no terminal, so no bar is drawn
    # into it; on a terminal the same command draws its epoch bar.
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 12, "PublicTest": 4, "PrivateTest": 4})
    overrides = [f"{k}={v}" for k, v in FAST.items()] + ["epochs=1", "input_size=48"]
    assert main(["train", "--config", "r18", "--data", str(data), "--out", str(tmp_path / "log"), *overrides]) == 0
    logged = capsys.readouterr().err
    assert "epoch 1/1:" not in logged and "\r" not in logged, logged[:300]
    monkeypatch.setattr("ferkit.cli._on_terminal", lambda stream: True)
    assert main(["train", "--config", "r18", "--data", str(data), "--out", str(tmp_path / "tty"), *overrides]) == 0
    assert "epoch 1/1:" in capsys.readouterr().err


def test_fit_time_plans_more_epochs_again_when_the_pace_picks_up(tiny_splits, tmp_path, monkeypatch):
    # The first epoch slow (its four clock readings 10 s apart: 30 s), the rest fast (1 s apart: 3 s); the Trainer
    # reads the clock once before them. Planned only ever down, the run kept the 2 epochs its first one planned
    # (30 s of the 60 gone, one more fits) and ended after 33 s of its minute.
    ticks = itertools.accumulate(itertools.chain([0, 0], [10] * 3, itertools.repeat(1)))
    fake_training_clock(monkeypatch, ticks)
    cfg = load_config("r18", {**FAST, "epochs": 10, "time_limit_min": 1.0, "fit_time": True})
    lines: list[str] = []
    result = train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lines.append)
    plans = [line.split("epochs fit")[0] for line in lines if line.startswith("fit_time:")]
    # after epoch 2: 33 s in, 16.5 s an epoch, 1 more fits (3); after epoch 3: 36 s, 12 s an epoch, 2 more (5) ...
    # after epoch 9: 54 s, 6 s an epoch, the last one of the config's 10 fits.
    assert plans == [f"fit_time: {n} of 10 " for n in (2, 3, 5, 6, 7, 8, 9, 10)]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert result.epochs_done == final["epochs_planned"] == 10
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends with the last planned epoch
    assert metrics[-1]["wall_s"] == pytest.approx(57.0)


def test_mixup_and_cutmix_change_what_the_model_learns(tiny_splits, tmp_path):
    plain = train(load_config("r18", FAST), tiny_splits, tmp_path / "plain", progress=False, log=lambda s: None)
    mixed = train(load_config("r18", {**FAST, "mixup": 0.4, "cutmix": 1.0}), tiny_splits, tmp_path / "mixed",
                  progress=False, log=lambda s: None)
    a = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "mixed" / "last.pt")["model"]
    assert plain.epochs_done == mixed.epochs_done
    assert any(not torch.equal(a[key], b[key]) for key in a if a[key].is_floating_point())
    lines = [json.loads(line) for line in (tmp_path / "mixed" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in lines)


def test_fit_time_names_the_pace_it_planned_by(tiny_splits, tmp_path):
    # runs/cpu60_fit after its 12th and 13th epochs: at 252 s a mean epoch with a faster 12th, 14 epochs fit; at
    # 255 s with a slower 13th (288 s) only 13, and the line names that 288 s, not the mean it did not plan by.
    cfg = load_config("r18", {**FAST, "epochs": 24, "time_limit_min": 60.0, "fit_time": True})
    lines: list[str] = []
    trainer = Trainer(cfg, tiny_splits, tmp_path / "run", log=lines.append, progress=False)
    trainer.epoch, trainer.epochs_s, trainer.wall_s = 12, 3028.0, 3028.0
    trainer.fit_to_time(236.0)
    trainer.epoch, trainer.epochs_s, trainer.wall_s = 13, 3316.0, 3316.0
    trainer.fit_to_time(288.0)
    assert [line for line in lines if line.startswith("fit_time:")] == [
        "fit_time: 14 of 24 epochs fit in 60 min at 252 s an epoch; the schedule now ends after epoch 14",
        "fit_time: 13 of 24 epochs fit in 60 min at 288 s an epoch (the last one; 255 s on average); "
        "the schedule now ends after epoch 13"]


def test_where_torch_compile_fails_the_run_says_so_once_and_trains_as_without_it(tiny_splits, tmp_path, monkeypatch):
    # compile=true on a machine without a C++ compiler: torch.compile's error comes at the first compiled call,
    # after the data was read; the run goes on eagerly, with the weights a run without compile would have.
    import torch._dynamo.exc

    calls = []

    def failing_compile(module, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: no working C++ compiler\nmore")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    lines = []
    train(load_config("r18", {**FAST, "compile": True}), tiny_splits, tmp_path / "compiled", progress=False,
          log=lines.append)
    train(load_config("r18", FAST), tiny_splits, tmp_path / "eager", progress=False, log=lambda s: None)
    assert calls == [1]
    assert [line for line in lines if line.startswith("compile:")] == [
        "compile: torch.compile failed (InvalidCxxCompiler: no working C++ compiler); training on without it"]
    a = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "eager" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
