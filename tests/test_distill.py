import math

import pytest
import torch
from torch import nn

from ferkit.cli import main
from ferkit.config import load_config
from ferkit.data.dataset import FER_CLASSES
from ferkit.engine import modelfile
from ferkit.engine.distill import CACHE_NAME, mixed_targets, teacher_probabilities
from ferkit.engine.inference import predict_logits
from ferkit.engine.modelfile import ModelMeta, build_model, load
from ferkit.engine.train import train
from ferkit.errors import FerkitError

from conftest import FAST, fake_training_clock, write_kaggle_tree


def constant_teacher(path, cls: int = 3, logit: float = 5.0, classes=FER_CLASSES):
    """A model file whose logits are ``logit`` for class ``cls`` and 0 for the others, whatever the image."""
    cfg = load_config("r18_cbam", FAST)
    meta = ModelMeta.from_config(cfg, classes)
    model = build_model(meta)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[cls] = logit
    return modelfile.save(model.eval(), meta, path, weights="fp32")


def test_mixed_targets_by_hand():
    teacher = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    mixed = mixed_targets(torch.tensor([0, 1]), teacher, 0.4)  # class indices: made one-hot
    assert torch.allclose(mixed, torch.tensor([[0.8, 0.1, 0.1], [0.0, 0.6, 0.4]]))
    soft = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])  # a distribution: mixed as it is
    assert torch.allclose(mixed_targets(soft, teacher, 0.5), torch.tensor([[0.25, 0.625, 0.125],
                                                                           [0.25, 0.25, 0.5]]))
    assert torch.equal(mixed_targets(soft, teacher, 0.0), soft)


def test_teacher_probabilities_by_hand_cached_and_recomputed(tiny_splits, tmp_path):
    path = constant_teacher(tmp_path / "t.safetensors")
    images = tiny_splits["train"].images[:10]
    lines: list[str] = []
    cache = tmp_path / "run" / CACHE_NAME
    probs = teacher_probabilities([path], images, FER_CLASSES, temperature=2.0, cache=cache, log=lines.append)
    top = math.exp(2.5) / (math.exp(2.5) + 6)  # logits 5 and six 0s, over temperature 2
    assert probs.shape == (10, 7)
    assert torch.allclose(probs[:, 3], torch.full((10,), top), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(10), atol=1e-5)
    again = teacher_probabilities([path], images, FER_CLASSES, temperature=2.0, cache=cache, log=lines.append)
    assert torch.equal(again, probs) and "read from" in lines[-1]
    other = teacher_probabilities([path], images, FER_CLASSES, temperature=1.0, cache=cache, log=lines.append)
    assert "read from" not in lines[-1]
    assert other[0, 3] == pytest.approx(math.exp(5) / (math.exp(5) + 6), abs=1e-5)
    # as many images, but others: computed again; a cut-off cache file: computed again and replaced
    teacher_probabilities([path], 255 - images, FER_CLASSES, cache=cache, log=lines.append)
    assert "read from" not in lines[-1]
    cache.write_bytes(cache.read_bytes()[:50])
    teacher_probabilities([path], images, FER_CLASSES, cache=cache, log=lines.append)
    assert "read from" not in lines[-1]
    teacher_probabilities([path], images, FER_CLASSES, cache=cache, log=lines.append)
    assert "read from" in lines[-1]


def test_two_teachers_are_the_softmax_of_their_mean_logits(tiny_splits, tmp_path):
    a = constant_teacher(tmp_path / "a.safetensors", cls=3, logit=4.0)
    b = constant_teacher(tmp_path / "b.safetensors", cls=5, logit=2.0)
    images = tiny_splits["train"].images[:4]
    probs = teacher_probabilities([a, b], images, FER_CLASSES, log=lambda s: None)
    logits = torch.zeros(7)
    logits[3], logits[5] = 2.0, 1.0
    assert torch.allclose(probs, torch.softmax(logits, 0).expand(4, 7), atol=1e-5)


def test_a_teacher_is_the_target_of_a_run(tiny_splits, tmp_path):
    # The teacher always names class 3, which the labels spread over 7 classes: a student trained on the
    # teacher alone must read nearly every image as 3, and the run keeps the teacher's probabilities.
    teacher = constant_teacher(tmp_path / "t.safetensors", logit=8.0)
    cfg = load_config("r18_cbam", {**FAST, "teacher": str(teacher), "teacher_mix": 1.0, "epochs": 3, "lr": 0.05})
    train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    assert (tmp_path / "run" / CACHE_NAME).is_file()
    model, meta = load(tmp_path / "run" / "best.pt")
    preds = predict_logits(model, tiny_splits["val"].images, meta, "none", precision="fp32",
                           channels_last=False).argmax(1)
    assert (preds == 3).float().mean() > 0.9


def test_one_teacher_name_is_a_list_and_the_mix_is_checked():
    assert load_config(None, ["teacher=default"]).teacher == ["default"]
    assert load_config(None, ["teacher=[a.pt, b.pt]"]).teacher == ["a.pt", "b.pt"]
    with pytest.raises(FerkitError, match=r"teacher_mix=1.5 must be in \[0, 1\]"):
        load_config(None, ["teacher_mix=1.5"])
    with pytest.raises(FerkitError, match=r"teacher_temperature=0.0 must be in \[0.1, 20\]"):
        load_config(None, ["teacher_temperature=0"])


@pytest.mark.parametrize("bad", ["missing", "classes"])
def test_a_bad_teacher_is_refused_before_the_run_folder_is_made(tmp_path, capsys, bad):
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 3, "PublicTest": 2, "PrivateTest": 2})
    if bad == "missing":
        teacher, said = tmp_path / "nowhere.safetensors", "no such"
    else:
        teacher = constant_teacher(tmp_path / "t.safetensors", cls=0, classes=("a", "b", "c"))
        said = "same classes"
    out = tmp_path / "run"
    code = main(["train", "--config", "r18_cbam", "--data", str(data), "--out", str(out), "--no-progress",
                 *[f"{k}={v}" for k, v in FAST.items()], f"teacher={teacher}"])
    assert code != 0
    assert said in capsys.readouterr().err
    assert not out.exists()


def test_teacher_probabilities_read_in_chunks_are_each_image_s_own(tiny_splits, tmp_path, monkeypatch):
    from ferkit.engine import distill

    torch.manual_seed(0)
    cfg = load_config("r18_cbam", FAST)
    meta = ModelMeta.from_config(cfg, FER_CLASSES)
    path = modelfile.save(build_model(meta).eval(), meta, tmp_path / "random.safetensors", weights="fp32")
    images = tiny_splits["train"].images[:10]
    model, meta = load(path)
    expected = torch.softmax(predict_logits(model, images, meta, "flip", precision="fp32", channels_last=False), 1)
    monkeypatch.setattr(distill, "CHUNK", 4)  # chunks of 4, 4 and 2 images
    probs = teacher_probabilities([path], images, FER_CLASSES, log=lambda s: None)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert not torch.allclose(probs[0], probs[5], atol=1e-3)  # the images read differently


def test_reading_the_teachers_counts_in_the_run_s_time_and_its_time_limit(tiny_splits, tmp_path, monkeypatch):
    from ferkit.engine import train as train_module

    fake_training_clock(monkeypatch, [100.0, 160.0])  # the teachers take 60 s of the training module's clock
    teacher = constant_teacher(tmp_path / "t.safetensors")
    cfg = load_config("r18_cbam", {**FAST, "teacher": str(teacher), "epochs": 2, "time_limit_min": 0.5})
    trainer = train_module.Trainer(cfg, tiny_splits, tmp_path / "run", log=lambda s: None, progress=False)
    assert trainer.wall_s == 60.0
    with pytest.raises(FerkitError, match=r"time limit of 0.5 min reached before the first epoch \(reading the "
                                          r"training set with the teachers took 1.0 min\)"):
        trainer.fit()  # 60 s already spent: past a 30-s limit before the first epoch


def test_under_torchrun_the_other_ranks_read_the_teachers_from_rank_0_s_cache(tiny_splits, tmp_path, monkeypatch):
    from ferkit.engine import distill
    from ferkit.engine import train as train_module
    from ferkit.engine.distributed import World

    teacher = constant_teacher(tmp_path / "t.safetensors")
    cfg = load_config("r18_cbam", {**FAST, "teacher": str(teacher), "epochs": 1})
    waits: list[int] = []
    monkeypatch.setattr(train_module, "barrier", lambda world: waits.append(world.rank))
    train_module.Trainer(cfg, tiny_splits, tmp_path / "run", log=lambda s: None, progress=False)  # rank 0
    assert (tmp_path / "run" / CACHE_NAME).is_file() and waits == [0]

    def no_reading(*args, **kwargs):
        raise AssertionError("rank 1 read the training images itself")

    # rank 1 of a world of one: not the main rank, and no process group to wrap the model for
    monkeypatch.setattr(train_module, "init_world", lambda device: World(rank=1, size=1))
    monkeypatch.setattr(distill, "predict_logits", no_reading)
    rank1 = train_module.Trainer(cfg, tiny_splits, tmp_path / "run", log=lambda s: None, progress=False)
    assert waits == [0, 1]
    # half the teacher's 3 (e^5 / (e^5 + 6)), half the one-hot label
    expected = 0.5 * math.exp(5) / (math.exp(5) + 6) + 0.5 * (tiny_splits["train"].labels == 3).float()
    assert torch.allclose(rank1.targets[:, 3], expected, atol=1e-5)


def test_a_run_keeps_its_teachers_training_records_after_their_files_are_replaced(tiny_splits, tmp_path, capsys):
    # teacher=default names whatever file is shipped as default when the student is exported, which may be the
    # student itself by then: the run keeps the record of each teacher it actually read, into the model file.
    from ferkit.engine.runs import run_provenance

    first = constant_teacher(tmp_path / "t.safetensors")
    model, meta = load(first)
    record = {"command": "ferkit train --config teacher_run", "seed": 3, "wall_s": 600.0}
    modelfile.save(model, meta.replace(training=record), first, weights="fp32")
    second = tmp_path / "other" / "best.pt"
    cfg = load_config("r18_cbam", {**FAST, "epochs": 1})
    train(cfg, tiny_splits, second.parent, progress=False, log=lambda s: None)
    cfg = load_config("r18_cbam", {**FAST, "teacher": [str(first), str(second)], "epochs": 1})
    train(cfg, tiny_splits, tmp_path / "run", progress=False, log=lambda s: None)
    modelfile.save(model, meta.replace(training={"command": "ferkit train --config usurper"}), first, weights="fp32")
    teachers = run_provenance(tmp_path / "run")["teachers"]
    assert teachers[0] == {"teacher": str(first), **record}
    assert teachers[1]["teacher"] == str(second) and teachers[1]["epochs_done"] == 1
    out = tmp_path / "student.safetensors"
    assert main(["export", str(tmp_path / "run" / "best.pt"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert load(out)[1].info["training"]["teachers"] == teachers


def test_a_resumed_run_keeps_its_teachers_probabilities_after_a_teacher_file_is_replaced_or_deleted(
        tmp_path, capsys):
    # teacher=default, resumed after a new default was shipped (or a teacher's run folder cleaned away): the run
    # goes on with the targets it started with, not a new teacher's, and does not need the old file.
    from ferkit.engine.train import Trainer, resume_config

    data = write_kaggle_tree(tmp_path / "fer", {"Training": 3, "PublicTest": 2, "PrivateTest": 2})
    teacher = constant_teacher(tmp_path / "t.safetensors", cls=3)
    run = tmp_path / "run"
    assert main(["train", "--config", "r18_cbam", "--data", str(data), "--out", str(run), "--no-progress",
                 *[f"{k}={v}" for k, v in FAST.items()], "epochs=2", f"teacher={teacher}"]) == 0
    started = torch.load(run / CACHE_NAME, weights_only=True)["probabilities"]
    assert (started.argmax(1) == 3).all()
    (run / "final.json").unlink()
    constant_teacher(teacher, cls=5)  # another model under the same name
    cfg = resume_config(run)
    from ferkit.engine.train import load_training_data
    splits = load_training_data(cfg, data, lambda s: None, False)
    trainer = Trainer(cfg, splits, run, log=lambda s: None, progress=False, resume=True)
    labels = nn.functional.one_hot(splits["train"].labels, 7).float()
    assert torch.allclose(trainer.targets, mixed_targets(labels, started, cfg.teacher_mix))
    teacher.unlink()  # and then no file at all
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    assert "as the run started with them" in capsys.readouterr().out
    assert (run / "final.json").is_file()
