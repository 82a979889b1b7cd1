import dataclasses
from importlib import resources

import pytest
import yaml

from ferkit.config import TrainConfig, load_config, shipped_configs
from ferkit.data.augment import TTA_MODES
from ferkit.errors import FerkitError
from ferkit.losses import list_losses, objective
from ferkit.models.attention import ATTENTION_LAYERS
from ferkit.models.resnet import STEMS
from ferkit.precision import PRECISIONS

DEFAULTS_TEXT = (resources.files("ferkit.configs") / "defaults.yaml").read_text()
REGISTRIES = {"stem": tuple(STEMS), "attention": tuple(ATTENTION_LAYERS), "loss": tuple(list_losses()),
              "tta": TTA_MODES, "precision": PRECISIONS}

PAPER_ROWS = {
    "r18": ("none", "softmax"), "r18_se": ("se", "softmax"), "r18_cbam": ("cbam", "softmax"),
    "r18_cbam_center": ("cbam", "center"), "r18_cbam_island": ("cbam", "island"),
}


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_configs_ship_and_describe_their_row(name):
    cfg = load_config(name)
    assert (cfg.attention, cfg.loss) == PAPER_ROWS[name]
    # The paper configs state only their row and take the protocol from the defaults: a changed
    # default must show up here, and then be pinned in the paper configs.
    protocol = (cfg.model, cfg.stem, cfg.in_chans, cfg.input_size, cfg.epochs, cfg.batch_size, cfg.lr, cfg.lam)
    assert protocol == ("resnet18", "cifar", 1, 48, 200, 128, 0.1, 0.5)


def test_shipped_config_keys_all_commented():
    for name in shipped_configs():
        text = (resources.files("ferkit.configs") / f"{name}.yaml").read_text()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                assert "#" in line, f"{name}: uncommented key line {line!r}"


def test_overrides_are_typed():
    cfg = load_config("r18_cbam", ["epochs=3", "lr=0.05", "stem=imagenet", "scale=[0.8, 1.0]", "weight_decay=1"])
    assert cfg.epochs == 3 and cfg.lr == 0.05 and cfg.stem == "imagenet"
    assert cfg.scale == [0.8, 1.0] and cfg.weight_decay == 1.0 and isinstance(cfg.weight_decay, float)
    assert load_config(None, {"seed": 5}).seed == 5


def test_unknown_key_suggests_the_near_one(tmp_path):
    with pytest.raises(FerkitError, match="did you mean 'epochs'"):
        load_config(None, ["epoch=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("atention: cbam\n")
    with pytest.raises(FerkitError, match=r"bad.yaml.*did you mean 'attention'"):
        load_config(bad)


@pytest.mark.parametrize("override,match", [
    ("epochs=three", "should be of type"), ("stem=vgg", "not one of"), ("flip", "key=value"),
])
def test_bad_values(override, match):
    with pytest.raises(FerkitError, match=match):
        load_config(None, [override])


def test_missing_config_file():
    with pytest.raises(FerkitError, match="no such config"):
        load_config("nope.yaml")


def test_defaults_file_lists_every_key_at_its_dataclass_default():
    listed = yaml.safe_load(DEFAULTS_TEXT)
    defaults = dataclasses.asdict(TrainConfig())
    assert list(listed) == list(defaults)  # every key, in the dataclass's order
    for key, value in defaults.items():
        # the type too: 10 == 10.0, but the file should show a float key as a float
        assert (listed[key], type(listed[key])) == (value, type(value)), key
    assert load_config("defaults") == TrainConfig()


def test_defaults_file_comments_every_key_and_lists_only_registered_choices():
    for line in DEFAULTS_TEXT.splitlines():
        if not line or line.startswith("#"):
            continue
        key, comment = line.split(":", 1)[0], line.partition("  # ")[2]
        assert comment, f"uncommented key {key!r}"
        if key in REGISTRIES:
            # the names ferkit ships, each registered; one added later needs no edit here (`ferkit models` lists all)
            listed = comment.split(":", 1)[0].split(" | ")
            assert len(listed) > 1 and set(listed) <= set(REGISTRIES[key]), f"{key}: {listed} not all registered"


def test_defaults_file_is_not_listed_as_a_recipe():
    assert "defaults" not in shipped_configs() and set(PAPER_ROWS) <= set(shipped_configs())


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_choice_keys_take_their_names_from_the_registries(key):
    for name in REGISTRIES[key]:
        assert getattr(load_config(None, {key: name}), key) == name
    with pytest.raises(FerkitError, match=f"{key}='bogus' is not one of {', '.join(REGISTRIES[key])}$"):
        load_config(None, {key: "bogus"})


def test_stems_are_listed_in_one_order():
    with pytest.raises(FerkitError, match="stem='vgg' is not one of cifar, s2, imagenet$"):
        load_config(None, ["stem=vgg"])


def test_a_registered_loss_is_a_valid_config_value(monkeypatch):
    monkeypatch.setattr(objective, "_LOSSES", dict(objective._LOSSES))
    with pytest.raises(FerkitError, match="not one of"):
        load_config(None, ["loss=plain"])
    objective.register_loss("plain")(lambda num_classes, feat_dim, lambda1, normalize: None)
    assert load_config(None, ["loss=plain"]).loss == "plain"


@pytest.mark.parametrize("override,match", [
    ("lr=0", "lr=0.0 must be > 0"), ("lr=-0.1", "must be > 0"), ("lr=100000", "at most 10"),
    ("lr=.nan", "finite"), ("lr=.inf", "finite"),
    ("batch_size=0", "batch_size=0 must be at least 1"), ("eval_batch_size=0", "at least 1"),
    ("epochs=-1", "epochs=-1 must be at least 1"), ("epochs=0", "at least 1"),
    ("warmup_epochs=-1", "at least 0"), ("weight_decay=-0.1", "at least 0"),
    ("label_smoothing=1", r"in \[0, 1\)"), ("label_smoothing=-0.1", r"in \[0, 1\)"),
    ("erase=1.5", r"probability in \[0, 1\]"), ("blur=-0.5", r"probability in \[0, 1\]"),
    ("photometric=-1", "at least 0"), ("noise=-0.1", "at least 0"), ("pad=-1", "at least 0"),
    ("input_size=4", "in 8..1024"), ("input_size=2048", "in 8..1024"), ("in_chans=2", "1 .grey. or 3"),
    ("drop_rate=1", r"in \[0, 1\)"), ("time_limit_min=-5", "at least 0"), ("threads=-1", "at least 0"),
    ("device=quantum", "device='quantum' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    ("device=cuda:x", "not a device"),
    ("model=resnet99", "model='resnet99' is not a registered model; use one of resnet18"),
    ("lowres=2", r"probability in \[0, 1\]"), ("aspect=-0.1", r"in \[0, 1\]"), ("perspective=0.9", r"in \[0, 0.5\]"),
    ("soft_mix=1.5", r"in \[0, 1\]"), ("classes=5", "0 .the data's own., 7 or 8"),
    ("hard_labels=votes", "not one of ferplus, fer2013"),
])
def test_out_of_range_values_are_refused_at_parse_time(override, match):
    with pytest.raises(FerkitError, match=match):
        load_config(None, [override])


def test_values_in_range_are_kept(tmp_path):
    cfg = load_config(None, ["lr=10", "device=cuda:1", "device=mps", "model=resnet34", "label_smoothing=0.1",
                             "erase=1", "input_size=8", "in_chans=3", "warmup_epochs=0", "threads=0"])
    assert (cfg.lr, cfg.device, cfg.model, cfg.erase, cfg.in_chans) == (10.0, "mps", "resnet34", 1.0, 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 0\n")
    with pytest.raises(FerkitError, match=r"bad.yaml: epochs=0 must be at least 1"):
        load_config(bad)
    for name in shipped_configs():
        load_config(name)  # every shipped config passes its own checks


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    # Nine levels of nested aliases ("billion laughs"): 10 lines that expanded past 1.1 GB before.
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
              for i in range(8)]
    lines.append("scale: *i")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerkitError, match=r"aliases \(\*a\) are not allowed in ferkit configs \(line 2\)") as err:
        load_config(bomb)
    assert len(str(err.value)) < 300
    with pytest.raises(FerkitError, match="should be of type"):  # taken as the text it is, never expanded
        load_config(None, ["scale=[&s 0.9, *s]"])


def test_huge_values_make_a_short_error(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("scale: [" + ", ".join(["[1, 2, 3]"] * 3000) + "]\n")
    with pytest.raises(FerkitError, match="should be of type") as err:
        load_config(big)
    assert len(str(err.value)) < 400
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(FerkitError, match="too large for a config"):
        load_config(huge)
