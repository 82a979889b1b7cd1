from ferkit.cli import build_parser, main
from ferkit.data import data_formats
from ferkit.data.augment import TTA_MODES
from ferkit.detect import list_detectors
from ferkit.losses import list_losses
from ferkit.models import list_models
from ferkit.models.attention import ATTENTION_LAYERS
from ferkit.precision import PRECISIONS


def test_models_lists_every_registry(capsys):
    assert main(["models"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["models"].strip().split(", ") == list_models()
    assert lines["attention"].strip().split(", ") == list(ATTENTION_LAYERS)
    assert lines["losses"].strip().split(", ") == list_losses()
    assert lines["detectors"].strip().split(", ") == list_detectors()
    assert lines["data formats"].strip().split(", ") == list(data_formats())


def _choices(command: str, option: str) -> tuple:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_option_choices_come_from_the_registries():
    assert _choices("predict", "--tta") == tuple(TTA_MODES)
    assert _choices("predict", "--detector") == tuple(list_detectors())
    assert _choices("evaluate", "--precision") == tuple(PRECISIONS)
    assert _choices("export", "--tta") == tuple(TTA_MODES)
