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
