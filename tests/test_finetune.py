"""A model meets another data set: cross-dataset evaluation by class name, and fine-tuning from a checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ferkit.cli import main
from ferkit.config import load_config
from ferkit.data import FER8_CLASSES, FER_CLASSES, FERDataset
from ferkit.engine.modelfile import ModelMeta, build_model, load_checkpoint, save, save_checkpoint
from ferkit.engine.evaluate import map_classes
from ferkit.engine.train import Trainer
from ferkit.errors import FerkitError

from conftest import tiny_split_dict

# resnet_tiny: loading and re-heading weights is under test, not ResNet-18 (its 64-d features feed the head)
FAST = {"model": "resnet_tiny", "stem": "imagenet", "input_size": 32, "attention": "none", "precision": "fp32",
        "threads": 1}


def write_checkpoint(path: Path, classes: tuple[str, ...], **overrides) -> Path:
    """A checkpoint of randomly initialised weights, as `ferkit train` stores them."""
    cfg = load_config("r18", {**FAST, **overrides})
    torch.manual_seed(123)
    model = build_model(ModelMeta.from_config(cfg, classes))
    with torch.no_grad():  # BN statistics away from their defaults, so loading them is visible
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
    save_checkpoint(path, {"meta": ModelMeta.from_config(cfg, classes).to_dict(), "model": model.state_dict()})
    return path


def relabelled(splits: dict[str, FERDataset], classes: tuple[str, ...]) -> dict[str, FERDataset]:
    """The splits with other class names (labels kept)."""
    return {name: FERDataset(s.images, s.labels, classes, s.split, s.source) for name, s in splits.items()}


# ---- cross-dataset evaluation ----

def data_with(classes: tuple[str, ...], counts: list[int]) -> FERDataset:
    labels = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(counts))
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return FERDataset(images, labels, classes, "test", "other data")


def test_eight_classes_on_a_seven_class_model() -> None:
    data = data_with(FER8_CLASSES, [2, 1, 0, 3, 1, 1, 2, 4])
    mapped, mapping = map_classes(data, list(FER_CLASSES))
    assert mapping.left_out == {"contempt": 4} and mapping.mapped == {c: c for c in FER_CLASSES}
    assert len(mapped) == 10 and mapped.classes == FER_CLASSES
    assert mapped.class_counts() == dict(zip(FER_CLASSES, [2, 1, 0, 3, 1, 1, 2]))
    assert torch.equal(mapped.images, data.images[:10])  # the contempt images, last, are the ones left out


def test_synonym_names_map_to_the_model_classes() -> None:
    data = data_with(("Sadness", "anger", "happiness", "normal", "surprised", "pain"), [1, 2, 3, 4, 5, 6])
    mapped, mapping = map_classes(data, list(FER_CLASSES))
    assert mapping.mapped == {"Sadness": "sad", "anger": "angry", "happiness": "happy", "normal": "neutral",
                              "surprised": "surprise"}
    assert mapping.left_out == {"pain": 6}
    assert mapped.class_counts() == {"angry": 2, "disgust": 0, "fear": 0, "happy": 3, "sad": 1, "surprise": 5,
                                     "neutral": 4}
    assert mapping.lines()[1] == "left out, unknown to the model: pain (6 images)"
    with pytest.raises(FerkitError, match="none of the data classes"):
        map_classes(data_with(("pain",), [3]), list(FER_CLASSES))


def test_cli_evaluates_on_data_with_other_classes(tmp_path: Path, capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", FER_CLASSES)
    counts = {"anger": 3, "Happiness": 2, "contempt": 4, "normal": 1}
    for c, (folder, count) in enumerate(counts.items()):
        (tmp_path / "photos" / "test" / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (40, 60), 30 * c + i).save(tmp_path / "photos" / "test" / folder / f"{i}.png")
    assert main(["evaluate", str(checkpoint), "--data", str(tmp_path / "photos"), "--no-detect", "--tta", "none",
                 "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "angry -> angry" in printed and "left out, unknown to the model: contempt (4 images)" in printed
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["class_mapping"]["left_out"] == {"contempt": 4}
    report = saved["report"]
    assert report["classes"] == list(FER_CLASSES) and report["n"] == 6
    assert [sum(row) for row in report["confusion"]] == [3, 0, 0, 2, 0, 0, 1]


# ---- fine-tuning ----

def make_trainer(tmp_path: Path, splits: dict[str, FERDataset], init: Path, logged: list[str], **overrides):
    cfg = load_config("r18", {**FAST, "init": str(init), **overrides})
    return Trainer(cfg, splits, tmp_path / "run", log=logged.append, progress=False)


def test_same_classes_load_every_weight(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    logged: list[str] = []
    trainer = make_trainer(tmp_path, tiny_split_dict(), checkpoint, logged)
    saved = torch.load(checkpoint, weights_only=True)["model"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert logged[0] == f"init: loaded {len(saved)} tensors from {checkpoint}, classifier head included"


@pytest.mark.parametrize("classes", [FER8_CLASSES, (*FER_CLASSES[1:], FER_CLASSES[0])], ids=["eight", "reordered"])
def test_other_classes_get_a_new_head(tmp_path: Path, classes: tuple[str, ...]) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    logged: list[str] = []
    trainer = make_trainer(tmp_path, relabelled(tiny_split_dict(), classes), checkpoint, logged)
    saved = torch.load(checkpoint, weights_only=True)["model"]
    state = trainer.model.state_dict()
    backbone = [key for key in saved if not key.startswith("fc.")]
    assert len(backbone) == len(saved) - 2
    for key in backbone:
        assert torch.equal(state[key], saved[key]), key
    assert state["fc.weight"].shape == (len(classes), 64)
    torch.manual_seed(0)  # the trainer's seed: the head is the one a fresh model of these classes gets
    fresh = build_model(trainer.meta).state_dict()
    assert torch.equal(state["fc.weight"], fresh["fc.weight"]) and not torch.equal(state["fc.bias"], saved["fc.bias"])
    assert f"all but the classifier head, which is new for {len(classes)} classes" in logged[0]


def test_init_from_a_ferkit_model_file(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    state = torch.load(checkpoint, weights_only=True)
    model = build_model(ModelMeta.from_dict(state["meta"], "test"))
    model.load_state_dict(state["model"])
    exported = save(model, ModelMeta.from_dict(state["meta"], "test"), tmp_path / "a.safetensors", weights="fp32")
    logged: list[str] = []
    trainer = make_trainer(tmp_path, relabelled(tiny_split_dict(), FER_CLASSES), exported, logged, input_size=48)
    loaded = trainer.model.state_dict()
    assert torch.equal(loaded["stem.0.weight"], state["model"]["stem.0.weight"])
    assert torch.equal(loaded["fc.weight"], state["model"]["fc.weight"])
    assert logged[0].endswith("note the input differs from its training: input_size 32 -> 48")


def test_init_of_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    with pytest.raises(FerkitError, match=r"the init model differs from the config's: stem 'imagenet' "
                                          r"\(config: 'cifar'\), attention 'none' \(config: 'se'\)") as err:
        make_trainer(tmp_path, tiny_split_dict(), checkpoint, [], attention="se", stem="cifar")
    assert str(err.value).startswith(str(checkpoint))
    with pytest.raises(FerkitError, match="no such checkpoint file"):
        make_trainer(tmp_path, tiny_split_dict(), tmp_path / "missing.pt", [])
    assert load_config(None, ["init=runs/x/best.pt"]).init == "runs/x/best.pt"


def test_init_by_shipped_model_name(tmp_path: Path) -> None:
    from ferkit.engine import modelfile
    from ferkit.engine.train import init_weights

    meta, weights = modelfile.read(modelfile.pretrained_path("default"))
    model = build_model(meta)
    line = init_weights(model, meta, "default")
    assert line.startswith("init: loaded") and line.endswith("default.safetensors, classifier head included")
    state = model.state_dict()
    assert all(torch.equal(state[key], value.to(state[key].dtype)) for key, value in weights.items())
    with pytest.raises(FerkitError, match="no shipped model called 'nope'"):
        init_weights(model, meta, "nope")
    # A path that names a file is a path, found or not: never mistaken for a shipped name.
    with pytest.raises(FerkitError, match="no such checkpoint file"):
        init_weights(model, meta, str(tmp_path / "default"))


# ---- freezing the leading backbone parts ----

def test_freeze_keeps_the_stem_and_first_stages_fixed_and_trains_the_rest(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    trainer = make_trainer(tmp_path, tiny_split_dict(), checkpoint, [], freeze=2, epochs=1, lr=0.5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_epoch()
    after = trainer.model.state_dict()
    fixed = [k for k in before if k.startswith(("stem.", "stages.0."))]
    trained = [k for k in before if k.startswith(("stages.1.", "stages.3.", "fc.")) and "num_batches" not in k]
    assert fixed and trained
    # weights and BatchNorm statistics of the frozen parts: exactly as loaded
    assert all(torch.equal(before[k], after[k]) for k in fixed), [k for k in fixed if not torch.equal(before[k], after[k])]
    # every weight and running statistic after them moved
    assert all(not torch.equal(before[k], after[k]) for k in trained), [k for k in trained if torch.equal(before[k], after[k])]
    # only the trained parameters reach the optimizer
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in in_optimizer for p in trainer.model.stem.parameters())
    assert all(id(p) in in_optimizer for p in trainer.model.fc.parameters())


def test_freeze_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FerkitError, match=r"freeze=6 must be in 0\.\.5"):
        load_config(None, ["freeze=6"])
    assert load_config(None, ["freeze=5"]).freeze == 5


def test_class_balance_weighs_the_loss_by_inverse_training_frequency(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    splits = tiny_split_dict()
    counts = torch.bincount(splits["train"].labels, minlength=len(FER_CLASSES)).float()
    trainer = make_trainer(tmp_path, splits, checkpoint, [], class_balance=True)
    present = counts > 0
    expected = torch.where(present, counts.sum() / (present.sum() * counts.clamp(min=1)), torch.zeros(()))
    assert torch.allclose(trainer.criterion.class_weights, expected)
    assert make_trainer(tmp_path, splits, checkpoint, []).criterion.class_weights is None


def test_a_run_from_a_model_file_keeps_that_file_s_training_record_after_the_file_is_replaced(
        tmp_path: Path, capsys) -> None:
    # init=default names whatever file is shipped as default when the run is exported, which may be another one
    # by then (a new default trained from the old). The run keeps the record of the file it actually started from.
    from ferkit.engine.modelfile import load
    from ferkit.engine.runs import run_provenance

    checkpoint = write_checkpoint(tmp_path / "a.pt", FER_CLASSES)
    state = torch.load(checkpoint, weights_only=True)
    meta = ModelMeta.from_dict(state["meta"], "test")
    model = build_model(meta)
    model.load_state_dict(state["model"])
    parent = {"command": "ferkit train --config parent", "seed": 3, "wall_s": 600.0}
    init = save(model, meta.replace(training=parent), tmp_path / "init.safetensors", weights="fp32")
    trainer = make_trainer(tmp_path, tiny_split_dict(), init, [], epochs=2)
    trainer.fit(stop_after=1)  # one epoch, then the file is replaced and the run resumed
    save(model, meta.replace(training={"command": "ferkit train --config usurper"}), init, weights="fp32")
    resumed = make_trainer(tmp_path, tiny_split_dict(), init, [], epochs=2)
    resumed.load_state(load_checkpoint(tmp_path / "run" / "last.pt"))
    resumed.fit()
    resumed.finish()
    assert run_provenance(tmp_path / "run")["started_from"] == parent
    out = tmp_path / "run.safetensors"
    assert main(["export", str(tmp_path / "run" / "best.pt"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert load(out)[1].info["training"]["started_from"] == parent


def test_a_run_from_another_run_s_checkpoint_keeps_that_run_s_record_after_its_folder_is_deleted(
        tmp_path: Path, capsys) -> None:
    # Run folders stay out of git and may be gone on a new machine: a run started from runs/parent/best.pt keeps
    # what that folder said, as it keeps a model file's record.
    import shutil

    from ferkit.engine.modelfile import load
    from ferkit.engine.runs import run_facts, run_provenance

    parent = make_trainer(tmp_path / "p", tiny_split_dict(), write_checkpoint(tmp_path / "a.pt", FER_CLASSES), [],
                          epochs=1)
    parent.fit()
    parent.finish()
    (tmp_path / "p" / "run" / "command.txt").write_text("ferkit train --config parent\n")
    parent_facts = run_facts(tmp_path / "p" / "run")
    child = make_trainer(tmp_path, tiny_split_dict(), tmp_path / "p" / "run" / "best.pt", [], epochs=1)
    child.fit()
    child.finish()
    assert run_provenance(tmp_path / "run")["started_from"] == parent_facts
    shutil.rmtree(tmp_path / "p")
    assert run_provenance(tmp_path / "run")["started_from"] == parent_facts
    out = tmp_path / "run.safetensors"
    assert main(["export", str(tmp_path / "run" / "best.pt"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert load(out)[1].info["training"]["started_from"] == parent_facts
