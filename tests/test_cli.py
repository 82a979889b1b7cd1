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


def test_models_lists_the_shipped_models_by_name(capsys):
    from ferkit.engine.modelfile import shipped_models

    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("shipped models:"))
    assert line.split(":", 1)[1].strip().split(", ") == shipped_models() and "default" in shipped_models()


def test_version_and_help_for_every_option(capsys):
    import pytest

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("ferkit ")
    undocumented = [f"{name} {action.option_strings[0]}"
                    for name, command in next(a for a in build_parser()._actions if a.dest == "command").choices.items()
                    for action in command._actions if action.option_strings and not action.help]
    assert undocumented == []


def test_one_meaning_per_option_name():
    # --format is how predict writes results; the data set's format and the kind of model file have names of
    # their own (the old spelling still works as an alias).
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    first = {name: {a.dest: a.option_strings[0] for a in command._actions if a.option_strings}
             for name, command in commands.items()}
    assert first["evaluate"]["format"] == first["cv"]["format"] == "--data-format"
    assert first["export"]["format"] == "--to" and first["predict"]["format"] == "--format"


def test_devices_by_name_must_be_there_and_auto_finds_the_best(capsys, monkeypatch, tmp_path):
    import pytest
    import torch

    from ferkit.engine.runtime import resolve_device
    from ferkit.errors import FerkitError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine, wherever it runs
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(FerkitError, match=rf"device '{name}' is not available .* \(there is: cpu\)"):
            resolve_device(name)
    with pytest.raises(FerkitError, match="not a device name"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU: auto takes it
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from ferkit.detect import sample_image_path

    out = tmp_path / "r.jsonl"
    assert main(["predict", str(sample_image_path()), "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ferkit: error: device 'cuda' is not available") and len(err.splitlines()) == 1
    assert not out.exists()  # refused before any model was loaded or file made
    assert main(["serve", "--device", "mps", "--port", "0"]) == 2
    assert "device 'mps' is not available" in capsys.readouterr().err
    assert main(["export", "default", "--device", "cuda", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "device 'cuda' is not available" in capsys.readouterr().err and not (tmp_path / "m.safetensors").exists()
    assert main(["predict", str(sample_image_path()), "--device", "cpu", "--no-progress"]) == 0
