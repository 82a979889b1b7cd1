"""Model files and the ONNX cache: bad metadata, shapes and weights refused in one line; a damaged cache rebuilt."""
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ferkit.cli import main
from ferkit.config import load_config
from ferkit.data import FER_CLASSES, default_cache_dir
from ferkit.detect import sample_image_path
from ferkit.engine.modelfile import ModelMeta, build_model, check_meta, load, save, save_checkpoint
from ferkit.engine.inference import OnnxForward
from ferkit.engine.predict import Recognizer
from ferkit.errors import FerkitError


def random_model(seed: int) -> tuple[torch.nn.Module, ModelMeta]:
    """A small random-weight model with non-trivial BN statistics, so its outputs are far from uniform."""
    meta = ModelMeta.from_config(load_config("r18_cbam", {"stem": "imagenet"}), FER_CLASSES, name=f"seed{seed}")
    torch.manual_seed(seed)
    model = build_model(meta).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    return model, meta


@pytest.fixture(scope="module")
def model_a():
    return random_model(0)


@pytest.fixture(scope="module")
def model_b():
    return random_model(1)


@pytest.fixture(scope="module")
def int8_file(model_a, tmp_path_factory):
    model, meta = model_a
    return save(model, meta, tmp_path_factory.mktemp("int8") / "a.safetensors")


@pytest.fixture(scope="module")
def file_tensors(int8_file):
    with safe_open(str(int8_file), framework="pt") as f:
        return json.loads(f.metadata()["meta"]), {key: f.get_tensor(key) for key in f.keys()}


def write_ferkit(path: Path, tensors: dict, meta) -> Path:
    """A ferkit model file with exactly these tensors and metadata, past every check on writing."""
    save_file(tensors, str(path), metadata={"format": "ferkit", "meta": json.dumps(meta)})
    return path


def one_line_error(excinfo, path, *words) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


NAN, INF = float("nan"), float("inf")
BAD_META = [  # (change to a good description, the key the message must name)
    ({"stem": None}, "missing stem"),
    ({"classes": None}, "missing classes"),
    ({"model": "resnet999"}, "model="),
    ({"stem": "fancy"}, "stem="),
    ({"attention": "transformer"}, "attention="),
    ({"attention": ["cbam"]}, "attention="),
    ({"reduction": 0}, "reduction="),
    ({"reduction": 16.0}, "reduction="),
    ({"in_chans": 2}, "in_chans="),
    ({"in_chans": "1"}, "in_chans="),
    ({"in_chans": True}, "in_chans="),
    ({"num_classes": 0}, "num_classes="),
    ({"num_classes": 100_000_000}, "num_classes="),
    ({"input_size": 4}, "input_size="),
    ({"input_size": 4096}, "input_size="),
    ({"input_size": 48.5}, "input_size="),
    ({"mean": "0.5"}, "mean="),
    ({"mean": NAN}, "mean="),
    ({"std": 0}, "std="),
    ({"std": -0.25}, "std="),
    ({"std": INF}, "std="),
    ({"classes": list(FER_CLASSES[:6])}, "classes="),
    ({"classes": ["happy"] * 7}, "classes="),
    ({"classes": "angry"}, "classes="),
    ({"drop_rate": 1.5}, "drop_rate="),
    ({"temperature": 0}, "temperature="),
    ({"temperature": -1.0}, "temperature="),
    ({"temperature": NAN}, "temperature="),
    ({"temperature": "1.5"}, "temperature="),
    ({"class_bias": [0.0] * 6}, "class_bias="),
    ({"class_bias": [0.0] * 6 + [NAN]}, "class_bias="),
    ({"class_bias": "none"}, "class_bias="),
    ({"crop_margin": -0.5}, "crop_margin="),
    ({"crop_margin": NAN}, "crop_margin="),
    ({"tta": "mirror"}, "tta="),
    ({"members": 0}, "members="),
    ({"members": 9}, "members="),
    ({"members": 2.0}, "members="),
]


def changed(meta: dict, change: dict) -> dict:
    return {key: value for key, value in {**meta, **change}.items() if value is not None}


# -- metadata ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, named", BAD_META, ids=[named + json.dumps(c)[:30] for c, named in BAD_META])
def test_bad_metadata_in_a_model_file_is_one_error_naming_the_key(file_tensors, tmp_path, change, named):
    meta, tensors = file_tensors
    path = write_ferkit(tmp_path / "bad.safetensors", tensors, changed(meta, change))
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    one_line_error(excinfo, path, "bad model metadata", named)


@pytest.mark.parametrize("change, named", [
    ({"classes": list(FER_CLASSES[:6])}, "classes="),
    ({"num_classes": 100_000_000}, "num_classes="),
    ({"model": None}, "missing model"),
    ({"in_chans": "1"}, "in_chans="),
])
def test_bad_metadata_in_a_checkpoint_is_one_error_naming_the_key(model_a, tmp_path, change, named):
    model, meta = model_a
    path = tmp_path / "bad.pt"
    save_checkpoint(path, {"meta": changed(meta.to_dict(), change), "model": model.state_dict()})
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    one_line_error(excinfo, path, named)


def test_metadata_is_checked_before_any_model_is_built(file_tensors, tmp_path, monkeypatch):
    def no_building(*args, **kwargs):
        raise AssertionError("a model was built from unchecked metadata")

    monkeypatch.setattr("ferkit.engine.modelfile.create_model", no_building)
    meta, tensors = file_tensors
    # 10^8 classes would be a 200 GB classifier: refused at once, without allocating it
    path = write_ferkit(tmp_path / "huge.safetensors", tensors, {**meta, "num_classes": 100_000_000})
    start = time.perf_counter()
    with pytest.raises(FerkitError, match=r"num_classes=100000000 should be the number of class names \(7\)"):
        load(path)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("meta", [[1, 2], "resnet18", None])
def test_metadata_that_is_not_a_mapping_is_refused(meta, tmp_path, model_a):
    model, _ = model_a
    path = tmp_path / "odd.pt"
    save_checkpoint(path, {"meta": meta, "model": model.state_dict()})
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    one_line_error(excinfo, path, "expected a mapping")


def test_good_metadata_passes_unchanged(file_tensors):
    meta, _ = file_tensors
    assert check_meta(meta, "x") is meta
    full = {**meta, "temperature": 1.2, "class_bias": [0.1] * 7, "crop_margin": 0.0, "tta": "tencrop"}
    assert check_meta(full, "x") is full


def test_cli_refuses_a_file_with_fewer_class_names_than_outputs(file_tensors, tmp_path, capsys):
    meta, tensors = file_tensors
    path = write_ferkit(tmp_path / "six.safetensors", tensors, {**meta, "classes": list(FER_CLASSES[:6])})
    out = tmp_path / "copy.safetensors"
    assert main(["export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "classes=" in err and "num_classes=7" in err
    assert not out.exists()


# -- tensors -----------------------------------------------------------------------------------------
def first_mismatch(meta: ModelMeta, change: dict, state: dict) -> str:
    """What the error should say of the first tensor, in model order, whose shape ``change`` alters."""
    wanted = build_model(meta.replace(**change)).state_dict()
    key = next(key for key, t in wanted.items() if key in state and state[key].shape != t.shape)
    return f"tensor {key} is {list(state[key].shape)} but the model it describes needs {list(wanted[key].shape)}"


def test_wrong_tensor_shapes_name_the_file_and_the_first_tensor(model_a, file_tensors, tmp_path):
    model, meta = model_a
    # a colour model description over grey weights: only the stem's first convolution differs
    expected = first_mismatch(meta, {"in_chans": 3}, model.state_dict())
    assert "stem" in expected
    path = write_ferkit(tmp_path / "colour.safetensors", file_tensors[1], {**file_tensors[0], "in_chans": 3})
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    one_line_error(excinfo, path, expected)

    pt = tmp_path / "five.pt"
    expected = first_mismatch(meta, {"classes": list(FER_CLASSES[:5])}, model.state_dict())
    assert "fc.weight is [7, 512]" in expected
    save_checkpoint(pt, {"meta": {**meta.to_dict(), "num_classes": 5, "classes": list(FER_CLASSES[:5])},
                         "model": model.state_dict()})
    with pytest.raises(FerkitError) as excinfo:
        load(pt)
    one_line_error(excinfo, pt, expected)


def test_a_damaged_int8_scale_is_one_error(file_tensors, tmp_path):
    meta, tensors = file_tensors
    key = next(k for k in tensors if k.endswith(".scale"))
    damaged = {**tensors, key: tensors[key][:-1].clone()}
    path = write_ferkit(tmp_path / "scale.safetensors", damaged, meta)
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    one_line_error(excinfo, path, key[: -len(".scale")], "damaged")


@pytest.mark.parametrize("value", [NAN, INF])
def test_non_finite_weights_are_refused(model_a, file_tensors, tmp_path, value):
    model, meta = model_a
    path = tmp_path / "nan.safetensors"
    save(model, meta, path, weights="fp32")
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    tensors["fc.bias"] = tensors["fc.bias"].clone()
    tensors["fc.bias"][3] = value
    write_ferkit(path, tensors, {**meta.to_dict(), "weights": "fp32"})
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    one_line_error(excinfo, path, "tensor fc.bias", "NaN or infinite")

    meta8, tensors8 = file_tensors  # an int8 file whose per-row scale is broken
    key = next(k for k in tensors8 if k.endswith(".scale"))
    scale = tensors8[key].clone()
    scale[0] = value
    path8 = write_ferkit(tmp_path / "nan8.safetensors", {**tensors8, key: scale}, meta8)
    with pytest.raises(FerkitError) as excinfo:
        load(path8)
    one_line_error(excinfo, path8, f"tensor {key[: -len('.scale')]}", "NaN or infinite")

    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.weight"][0, 0] = value
    pt = tmp_path / "nan.pt"
    save_checkpoint(pt, {"meta": meta.to_dict(), "model": state})
    with pytest.raises(FerkitError) as excinfo:
        load(pt)
    one_line_error(excinfo, pt, "tensor fc.weight", "NaN or infinite")


def test_a_good_file_loads_with_the_same_outputs(model_a, tmp_path):
    model, meta = model_a
    path = save(model, meta, tmp_path / "good.safetensors", weights="fp32")
    loaded, loaded_meta = load(path)
    assert loaded_meta.to_dict() == {**meta.to_dict(), "weights": "fp32"}
    x = torch.randn(3, 1, 48, 48)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


# -- ONNX cache --------------------------------------------------------------------------------------
CROPS = torch.randint(0, 255, (6, 1, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def onnx_probs(model, meta) -> torch.Tensor:
    return Recognizer(model, meta, backend="onnx", detect=False).classify_crops(CROPS)


def torch_probs(model, meta) -> torch.Tensor:
    return Recognizer(model, meta, backend="torch", detect=False).classify_crops(CROPS)


def cache_files() -> set[Path]:
    return set((default_cache_dir() / "onnx").glob("*.onnx"))


def assert_cache_sound(path: Path) -> None:
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_truncated_onnx_cache_is_rebuilt(model_a):
    model, meta = model_a
    expected = torch_probs(model, meta)
    torch.testing.assert_close(onnx_probs(model, meta), expected, atol=1e-4, rtol=0)
    (path,) = cache_files()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    torch.testing.assert_close(onnx_probs(model, meta), expected, atol=1e-4, rtol=0)
    assert_cache_sound(path)


@pytest.mark.parametrize("with_record", [False, True], ids=["onnx-only", "onnx-and-record"])
def test_another_models_cache_file_is_detected_and_rebuilt(model_a, model_b, with_record):
    (model, meta), (other, other_meta) = model_a, model_b
    expected = torch_probs(model, meta)
    assert (expected - torch_probs(other, other_meta)).abs().max() > 0.01  # the swap would show
    onnx_probs(model, meta)
    (mine,) = cache_files()
    onnx_probs(other, other_meta)
    (theirs,) = cache_files() - {mine}
    shutil.copyfile(theirs, mine)
    if with_record:
        shutil.copyfile(theirs.with_suffix(".json"), mine.with_suffix(".json"))
    torch.testing.assert_close(onnx_probs(model, meta), expected, atol=1e-4, rtol=0)
    assert_cache_sound(mine)
    assert mine.read_bytes() != theirs.read_bytes()


def test_bit_flip_in_the_onnx_cache_is_detected(model_a):
    model, meta = model_a
    expected = torch_probs(model, meta)
    onnx_probs(model, meta)
    (path,) = cache_files()
    data = bytearray(path.read_bytes())
    at = data.find(model.fc.bias.detach().numpy().tobytes())
    assert at > 0
    data[at + 3] ^= 0x40  # an exponent bit of the first class's bias: loads fine, computes something else
    path.write_bytes(bytes(data))
    torch.testing.assert_close(onnx_probs(model, meta), expected, atol=1e-4, rtol=0)
    assert_cache_sound(path)


def test_read_only_cache_folder_still_predicts(model_a, monkeypatch):
    model, meta = model_a
    root = default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):  # root ignores permissions: make creating files there fail as it would
            mkstemp = tempfile.mkstemp

            def read_only(*args, dir=None, **kwargs):
                if dir is not None and Path(dir).resolve().is_relative_to(root.resolve()):
                    raise PermissionError(13, "Permission denied", str(dir))
                return mkstemp(*args, dir=dir, **kwargs)

            monkeypatch.setattr(tempfile, "mkstemp", read_only)
        torch.testing.assert_close(onnx_probs(model, meta), torch_probs(model, meta), atol=1e-4, rtol=0)
        assert not cache_files()
    finally:
        root.chmod(0o755)


def test_a_damaged_onnx_file_given_by_the_user_is_one_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not an onnx model at all")
    with pytest.raises(FerkitError) as excinfo:
        OnnxForward(path)
    one_line_error(excinfo, path, "not a loadable ONNX model")


# -- export never overwrites its input ---------------------------------------------------------------
def test_export_refuses_to_overwrite_its_input(model_a, tmp_path, capsys):
    model, meta = model_a
    ferkit_file = save(model, meta, tmp_path / "m.safetensors", weights="fp32")
    checkpoint = tmp_path / "b.pt"
    save_checkpoint(checkpoint, {"meta": meta.to_dict(), "model": model.state_dict()})
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pt").symlink_to(checkpoint)
    os.link(ferkit_file, tmp_path / "hard.safetensors")
    before = {p: p.read_bytes() for p in (ferkit_file, checkpoint)}
    for argv in (
        [str(checkpoint), "--out", str(checkpoint)],
        [str(checkpoint), "--out", str(tmp_path / "sub" / ".." / "b.pt")],
        [str(checkpoint), "--out", str(tmp_path / "link.pt")],
        [str(ferkit_file), "--out", str(tmp_path / "hard.safetensors")],
        [str(checkpoint), "--format", "onnx", "--out", str(checkpoint)],
    ):
        assert main(["export", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "input model" in err and "--out" in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt", "hard.safetensors", "link.pt", "m.safetensors", "sub"]

    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b.safetensors")]) == 0
    assert load(tmp_path / "b.safetensors")[1].classes == FER_CLASSES


def test_save_ferkit_model_refuses_its_source(model_a, tmp_path):
    model, meta = model_a
    path = save(model, meta, tmp_path / "m.safetensors", weights="fp32")
    before = path.read_bytes()
    with pytest.raises(FerkitError, match="input model"):
        save(model, meta, path, weights="int8", source=path)
    assert path.read_bytes() == before


def test_save_ferkit_model_refuses_bad_metadata_before_writing(model_a, tmp_path):
    model, meta = model_a
    path = tmp_path / "m.safetensors"
    with pytest.raises(FerkitError, match="temperature="):
        save(model, dataclasses.replace(meta, temperature=math.inf), path)
    assert not path.exists()


def relabel_dtypes(path: Path, out: Path, change: dict) -> Path:
    """A copy of safetensors file ``path`` whose header names dtype ``change[old]`` where it named ``old``
    (same byte sizes, so the file stays well formed): what a damaged or forged header does."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    for key, entry in header.items():
        if key != "__metadata__" and entry["dtype"] in change:
            if callable(change[entry["dtype"]]):
                entry["dtype"] = change[entry["dtype"]](key)
            else:
                entry["dtype"] = change[entry["dtype"]]
    text = json.dumps(header).encode()
    text += b" " * (size - len(text)) if len(text) <= size else b""
    out.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])
    return out


@pytest.mark.parametrize("change, tensor, stored", [
    ({"F16": "BF16"}, "stem.0.weight", "BF16"),  # every F16 tensor relabelled: read as other numbers
    ({"F32": lambda key: "I32" if key == "fc.weight.scale" else "F32"}, "fc.weight.scale", "I32"),
])
def test_relabelled_tensor_dtypes_are_refused(int8_file, tmp_path, change, tensor, stored):
    with safe_open(str(int8_file), framework="pt") as f:
        keys = list(f.keys())
    path = relabel_dtypes(int8_file, tmp_path / "relabelled.safetensors", change)
    with safe_open(str(path), framework="pt") as f:  # well formed: only ferkit can tell
        assert f.get_slice(keys[0]).get_dtype() in ("BF16", "F32", "I8", "F16")
    with pytest.raises(FerkitError) as excinfo:
        load(path)
    message = one_line_error(excinfo, path, "damaged", f"stored as {stored}")
    assert tensor in message or stored == "BF16"


def test_deeply_nested_or_huge_metadata_is_one_error(file_tensors, tmp_path):
    _, tensors = file_tensors
    deep = tmp_path / "deep.safetensors"
    save_file(tensors, str(deep), metadata={"format": "ferkit", "meta": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(FerkitError) as excinfo:
        load(deep)
    one_line_error(excinfo, deep, "nests deeper than")
    huge = tmp_path / "huge.safetensors"
    save_file(tensors, str(huge), metadata={"format": "ferkit", "meta": json.dumps({"x": "y" * (2 << 20)})})
    with pytest.raises(FerkitError) as excinfo:
        load(huge)
    one_line_error(excinfo, huge, "more than a description holds")


def test_export_never_replaces_a_file_the_user_did_not_name(model_a, tmp_path, capsys):
    model, meta = model_a
    checkpoint = tmp_path / "m.pt"
    save_checkpoint(checkpoint, {"meta": meta.to_dict(), "model": model.state_dict()})
    mine = tmp_path / "m.onnx"
    mine.write_bytes(b"the user's own ONNX file")
    assert main(["export", str(checkpoint), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "m.onnx exists and --out was not given" in err
    assert mine.read_bytes() == b"the user's own ONNX file"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(mine)]) == 0  # named: replaced
    assert mine.read_bytes() != b"the user's own ONNX file"


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_an_output_under_a_file_is_one_line(model_a, tmp_path, capsys, command):
    model, meta = model_a
    checkpoint = tmp_path / "m.pt"
    save_checkpoint(checkpoint, {"meta": meta.to_dict(), "model": model.state_dict()})
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    argv = {"export": ["export", str(checkpoint), "--out", str(blocker / "m.safetensors")],
            "evaluate": ["evaluate", str(checkpoint), "--data", str(tmp_path), "--out", str(blocker / "eval")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{blocker} is a file, not a folder" in err, err
    assert blocker.read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("final", ['{"wall_s": 1', '[1, 2]', '{"config": "x"}', '{"config": {"init": 5}}'])
def test_export_beside_a_damaged_final_json_still_exports(model_a, tmp_path, capsys, final):
    model, meta = model_a
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, {"meta": meta.to_dict(), "model": model.state_dict()})
    (tmp_path / "final.json").write_text(final)
    (tmp_path / "command.txt").write_bytes(b"ferkit train \xff")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.safetensors")]) == 0, capsys.readouterr().err
    exported = load(tmp_path / "m.safetensors")[1]
    assert exported.info["training"]["command"] == "ferkit train \ufffd"
    assert "wall_s" not in exported.info["training"]


def test_export_takes_a_shipped_models_name_and_repacks_a_model_file_beside_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "default", "--to", "onnx", "--no-progress"]) == 0  # as --model default in predict
    assert (tmp_path / "default.onnx").is_file()
    assert main(["export", "default", "--weights", "fp16", "--no-progress"]) == 0
    assert load(tmp_path / "default.safetensors")[1].name == "default"
    # a model file repacked without --out: the default would be the input, so its weights name the copy
    assert main(["export", str(tmp_path / "default.safetensors"), "--weights", "int8", "--no-progress"]) == 0
    assert (tmp_path / "default_int8.safetensors").is_file()


def test_an_int8_onnx_file_beside_a_model_is_what_auto_runs(model_a, tmp_path, capsys):
    from conftest import write_kaggle_tree

    model, meta = model_a
    source = save(model, meta.replace(name="small"), tmp_path / "small.safetensors", weights="fp32")
    assert main(["export", str(source), "--to", "onnx", "--weights", "int8"]) == 2  # no faces to calibrate on
    assert "--data" in capsys.readouterr().err and not (tmp_path / "small.int8.onnx").exists()
    data = write_kaggle_tree(tmp_path / "fer", {"Training": 10, "PrivateTest": 1}, size=48)
    assert main(["export", str(source), "--to", "onnx", "--weights", "int8", "--data", str(data),
                 "--no-progress"]) == 0
    assert (tmp_path / "small.int8.onnx").is_file()  # NAME.int8.onnx beside NAME.safetensors
    int8, fp32 = Recognizer.load(source), Recognizer.load(source, backend="onnx")
    assert (int8.backend, fp32.backend) == ("onnx-int8", "onnx")
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 1, 48, 48), dtype=np.uint8))
    p8, p32 = int8.classify_crops(crops), fp32.classify_crops(crops)
    assert float((p8 - p32).abs().max()) < 0.1 and float((p8.argmax(1) == p32.argmax(1)).float().mean()) >= 0.9
    # the int8 file of another model (here: the same weights described otherwise) is not used for this one
    save(model, meta.replace(name="small", temperature=2.0), source, weights="fp32")
    with pytest.warns(UserWarning, match=r"small.int8.onnx: not this model's int8 file .* runs in fp32"):
        assert Recognizer.load(source).backend == "onnx"
    with pytest.raises(FerkitError, match="no int8 ONNX file beside it"):
        Recognizer.load(source, backend="onnx-int8")


def test_the_shipped_model_runs_its_int8_file_by_default():
    recognizer = Recognizer.load()
    assert recognizer.backend == "onnx-int8" and "backend onnx-int8" in recognizer.describe()
    (result,) = recognizer(sample_image_path())
    assert result.faces[0].label == "happy"


# -- ensembles -----------------------------------------------------------------------------------------
def test_ensemble_averages_its_members_logits_and_joins_their_features(model_a, model_b):
    from ferkit.models.ensemble import Ensemble

    (a, _), (b, _) = model_a, model_b
    joined = Ensemble([a, b]).eval()
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        features, logits = joined(x, return_features=True)
        torch.testing.assert_close(logits, (a(x) + b(x)) / 2)
        torch.testing.assert_close(features, torch.cat([a.forward_features(x), b.forward_features(x)], 1))
    assert joined.num_features == 2 * a.num_features and features.shape == (4, joined.num_features)
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble([a])


def test_export_joins_models_into_one_ensemble_file(model_a, model_b, tmp_path, capsys):
    paths = []
    for name, (model, meta) in (("a", model_a), ("b", model_b)):
        paths.append(save(model, meta, tmp_path / f"{name}.safetensors", weights="fp32"))
    out = tmp_path / "both.safetensors"
    assert main(["export", *map(str, paths), "--out", str(out), "--weights", "fp32"]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    model, meta = load(out)
    assert meta.members == 2 and meta.name == "ensemble" and meta.classes == FER_CLASSES
    assert [m["file"] for m in meta.info["training"]["members"]] == [str(p) for p in paths]
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), (model_a[0](x) + model_b[0](x)) / 2, atol=1e-5, rtol=0)
    # it reads faces as any model file does, with the same probabilities in torch and ONNX
    expected = torch_probs(model, meta)
    torch.testing.assert_close(onnx_probs(model, meta), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(Recognizer.load(out, backend="torch", detect=False).classify_crops(CROPS), expected)
    # a single model's file says nothing of members, as files from before ensembles
    assert "members" not in load(paths[0])[1].to_dict() and load(paths[0])[1].members == 1


def test_an_ensemble_is_refused_where_it_cannot_be(model_a, tmp_path, capsys):
    from ferkit.engine.export import export
    from ferkit.engine.modelfile import ensemble
    from ferkit.engine.train import init_weights

    model, meta = model_a
    a = save(model, meta, tmp_path / "a.safetensors", weights="fp32")
    other = ModelMeta.from_config(load_config("r18_cbam", {"stem": "imagenet"}), FER_CLASSES[::-1])
    b = save(build_model(other), other, tmp_path / "b.safetensors", weights="fp32")
    with pytest.raises(FerkitError, match=r"b.safetensors: cannot join .*a.safetensors in an ensemble: classes"):
        ensemble([a, b])
    with pytest.raises(FerkitError, match="joins 2 to 8 models; 1 given"):
        ensemble([a])
    out = tmp_path / "ens.safetensors"
    with pytest.raises(FerkitError, match="name it with --out"):
        export([a, a])
    with pytest.raises(FerkitError, match="the input model"):
        export([a, a], a)
    export([a, a], out, weights="fp32")
    with pytest.raises(FerkitError, match="is an ensemble of 2 models already"):
        ensemble([out, a])
    with pytest.raises(FerkitError, match="is an ensemble of 2 models; fine-tune from one of its members"):
        init_weights(build_model(meta), meta, out)


def test_a_model_file_exported_again_keeps_how_its_weights_were_trained(model_a, model_b, tmp_path, capsys):
    # A model file carries its training record; exporting it again (another tta, a new calibration, into an
    # ensemble) from a folder with no run files must not replace that record with the empty one of its folder.
    model, meta = model_a
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", {"meta": meta.to_dict(), "model": model.state_dict()})
    (run / "command.txt").write_text("ferkit train --config fer2013_shipped seed=7")
    (run / "final.json").write_text(json.dumps({"seed": 7, "val_acc": 0.5, "config": {"epochs": 3}}))
    first = tmp_path / "first.safetensors"
    assert main(["export", str(run / "best.pt"), "--out", str(first)]) == 0, capsys.readouterr().err
    recorded = load(first)[1].info["training"]
    assert recorded["command"] == "ferkit train --config fer2013_shipped seed=7" and recorded["seed"] == 7
    again = tmp_path / "elsewhere" / "again.safetensors"
    again.parent.mkdir()
    assert main(["export", str(first), "--out", str(again), "--tta", "none"]) == 0, capsys.readouterr().err
    assert load(again)[1].info["training"] == recorded
    other = save(*model_b, tmp_path / "elsewhere" / "b.safetensors", weights="fp32")
    both = tmp_path / "elsewhere" / "both.safetensors"
    assert main(["export", str(first), str(other), "--out", str(both)]) == 0, capsys.readouterr().err
    members = load(both)[1].info["training"]["members"]
    assert members[0] == {"file": str(first), **recorded}
    assert members[1] == {"file": str(other)}


def test_export_keeps_a_model_files_crop_margin_unless_told(model_a, tmp_path, capsys):
    model, meta = model_a
    wide = save(model, meta.replace(crop_margin=0.25), tmp_path / "wide.safetensors", weights="fp32")
    assert main(["export", str(wide), "--out", str(tmp_path / "same.safetensors")]) == 0, capsys.readouterr().err
    assert load(tmp_path / "same.safetensors")[1].crop_margin == 0.25
    assert main(["export", str(wide), "--out", str(tmp_path / "told.safetensors"), "--crop-margin", "0.15"]) == 0
    assert load(tmp_path / "told.safetensors")[1].crop_margin == 0.15
