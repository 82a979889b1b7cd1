import pytest

from ferkit.config import TrainConfig, load_config, shipped_configs
from ferkit.errors import FerkitError

PAPER_ROWS = {
    "r18": ("none", "softmax"), "r18_se": ("se", "softmax"), "r18_cbam": ("cbam", "softmax"),
    "r18_cbam_center": ("cbam", "center"), "r18_cbam_island": ("cbam", "island"),
}


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_configs_ship_and_describe_their_row(name):
    cfg = load_config(name)
    assert (cfg.attention, cfg.loss) == PAPER_ROWS[name]
    assert cfg.epochs == 200 and cfg.batch_size == 128 and cfg.model == "resnet18"


def test_shipped_config_keys_all_commented():
    from importlib import resources

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


def test_defaults_match_dataclass():
    assert load_config() == TrainConfig()


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
