"""Packaging a trained model for use: a calibrated ferkit model file, or ONNX."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ferkit.data import FERDataset, load_dataset
from ferkit.engine import modelfile
from ferkit.engine.calibrate import balanced_score, fit_class_bias, fit_temperature, nll
from ferkit.engine.evaluate import align_classes
from ferkit.engine.inference import adjusted_logits, int8_onnx_bytes, onnx_bytes, predict_logits
from ferkit.engine.metrics import expected_calibration_error
from ferkit.engine.modelfile import ModelMeta
from ferkit.engine.runs import training_record
from ferkit.engine.runtime import resolve_device
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write, check_writable

FORMATS = ("ferkit", "onnx")


def export_onnx(model: nn.Module, meta: ModelMeta, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (see :func:`onnx_bytes`) to ``path``."""
    data = onnx_bytes(model, meta, opset)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def calibrate(model: nn.Module, meta: ModelMeta, val: FERDataset, test: FERDataset, class_bias: bool = True,
              log: Callable[[str], None] = print, device: torch.device | str = "cpu") -> ModelMeta:
    """``meta`` with a temperature (and, with ``class_bias``, a rare-class logit bias) fitted on ``val``;
    accuracy and calibration before and after are measured on ``test`` and kept in ``meta.info``."""
    scores = {}
    for name, split in (("val", val), ("test", test)):
        align_classes(split, list(meta.classes), split.source)
        logits = predict_logits(model.to(device), split.images, meta, meta.tta, 512, "fp32", False, device)
        scores[name] = (logits.cpu(), split.labels)
    meta = meta.replace(class_bias=None, temperature=1.0)
    balance: dict[str, Any] = {}
    if class_bias:
        # The rare classes' prior: the training counts the checkpoint records, else the val split's.
        val_logits, val_labels = scores["val"]
        prior = meta.class_counts or torch.bincount(val_labels, minlength=meta.num_classes).tolist()
        tau, bias = fit_class_bias(val_logits, val_labels, torch.tensor(prior, dtype=torch.float32))
        balance = {"class_bias": bias, "class_bias_tau": tau}
        meta = meta.replace(class_bias=bias)
        log(f"class bias: tau {tau:.1f} (-tau * log prior, chosen on val)")
    scores = {name: (adjusted_logits(logits, meta.class_bias, meta.temperature), labels) for name, (logits, labels) in scores.items()}
    temperature = fit_temperature(*scores["val"])
    logits, labels = scores["test"]
    calibration = {
        "temperature": temperature, "fitted_on": "val",
        "test_nll_before": nll(logits, labels), "test_nll_after": nll(logits, labels, temperature),
        "test_ece_before": expected_calibration_error(torch.softmax(logits, 1), labels),
        "test_ece_after": expected_calibration_error(torch.softmax(logits / temperature, 1), labels),
        **balance,
    }
    val_acc, val_mean = balanced_score(*scores["val"])
    test_acc, test_mean = balanced_score(logits, labels)
    log(f"temperature {temperature:.3f}: test NLL {calibration['test_nll_before']:.4f} -> "
        f"{calibration['test_nll_after']:.4f}, ECE {calibration['test_ece_before']:.4f} -> "
        f"{calibration['test_ece_after']:.4f}; val {val_acc:.2%} (mean per class {val_mean:.2%}), "
        f"test {test_acc:.2%} (mean per class {test_mean:.2%}) (tta {meta.tta})")
    return meta.replace(temperature=temperature, calibration=calibration, val_acc=val_acc, test_acc=test_acc,
                        val_mean_class_acc=val_mean, test_mean_class_acc=test_mean)


CALIBRATION_FACES = 512  # training faces (and their mirror images) that set an int8 ONNX file's activation ranges


def export(source: str | Path | list[str | Path], out: str | Path | None = None, *, format: str = "ferkit", weights: str | None = None,
           crop_margin: float | None = None, tta: str | None = None, name: str | None = None,
           data: str | Path | None = None, class_bias: bool = True, progress: bool = True,
           log: Callable[[str], None] = print, device: str = "cpu") -> Path:
    """Package checkpoint or model file ``source`` as a ferkit model file (or ONNX) at ``out``.

    A ferkit model file records how its model was trained (the run folder's files, and the runs its
    weights started from; a model file's own record when the source is one), the face-box ``crop_margin``
    and test-time views ``tta`` it is read with (by default the source's own), and, given the data set
    ``data`` (a path), a temperature and rare-class bias fitted on its val split and measured on its test
    split (see :func:`calibrate`) for the ``weights`` the file stores (default int8).
    An ONNX file is fp32 by default; ``weights="int8"`` quantises it statically, its activations calibrated
    on :data:`CALIBRATION_FACES` faces of ``data``'s train split, and names it ``NAME.int8.onnx``: beside a
    model file, a Recognizer of that file runs it. ``source`` is never overwritten.

    A list of several sources is joined as one ensemble (:func:`ferkit.engine.modelfile.ensemble`), written
    to ``out`` (which must be given) with every member's training provenance.
    """
    if format not in FORMATS:
        raise FerkitError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    weights = weights or ("fp32" if format == "onnx" else "int8")
    allowed = ("fp32", "int8") if format == "onnx" else modelfile.WEIGHT_DTYPES
    if weights not in allowed:
        raise FerkitError(f"weights={weights!r}: choose one of {', '.join(allowed)} for {format} files")
    resolve_device(device)  # a device that is not there is said before anything is read
    int8_onnx = format == "onnx" and weights == "int8"
    if int8_onnx and data is None:
        raise FerkitError("an int8 ONNX file is calibrated on training faces: give the data set (--data PATH)")
    if isinstance(source, (list, tuple)):
        if len(source) == 1:
            source = source[0]
        elif out is None:
            raise FerkitError(f"an ensemble of {len(source)} models is a new file: name it with --out")
        else:
            return _export_ensemble(list(source), Path(out), format=format, weights=weights, crop_margin=crop_margin,
                                    tta=tta, name=name, data=data, class_bias=class_bias, progress=progress,
                                    log=log, device=device)
    given = Path(source).expanduser()
    source = modelfile.model_path(source)  # a shipped model's name, or a file
    named = out is not None
    suffix = ".int8.onnx" if int8_onnx else ".onnx" if format == "onnx" else ".safetensors"
    if named:
        out = Path(out)
    else:
        # Beside the source file; a shipped model's copy goes to the current folder under its name. When that
        # would be the source itself (re-packing a .safetensors), the weights' dtype tells the two apart.
        base = given if source != given else source
        out = base.with_name(base.with_suffix("").name + suffix)
        if out.resolve() == source.resolve():
            out = out.with_name(f"{out.stem}_{weights}{suffix}")
    modelfile.check_not_input(out, source)  # before anything is loaded or written
    if not named and out.exists():  # a file the user did not name is never replaced
        raise FerkitError(f"{out} exists and --out was not given; name the output file with --out "
                          "(naming the existing file replaces it)")
    check_writable(out.parent)
    model, meta = modelfile.load(source)
    return _write(model, meta, out, source=source, provenance=training_record(source),
                  default_name=source.stem, format=format, weights=weights, crop_margin=crop_margin, tta=tta,
                  name=name, data=data, class_bias=class_bias, progress=progress, log=log, device=device)


def _export_ensemble(sources: list[str | Path], out: Path, **options: Any) -> Path:
    """:func:`export` of several models joined as one ensemble."""
    for source in sources:
        modelfile.check_not_input(out, modelfile.model_path(source))  # before anything is loaded
    check_writable(out.parent)
    model, meta, members = modelfile.ensemble(sources)
    options["log"](f"ensemble of {len(members)}: " + ", ".join(str(path) for path, _ in members))
    provenance = {"members": [{"file": str(path), **training_record(path)} for path, _ in members]}
    return _write(model, meta, out, source=None, provenance=provenance, default_name="ensemble", **options)


def _write(model: nn.Module, meta: ModelMeta, out: Path, *, source: Path | None, provenance: dict[str, Any],
           default_name: str, format: str, weights: str, crop_margin: float | None, tta: str | None, name: str | None,
           data: str | Path | None, class_bias: bool, progress: bool, log: Callable[[str], None],
           device: str) -> Path:
    """Write ``model`` as :func:`export` describes: int8 or fp32 ONNX, or a ferkit model file, calibrated
    on ``data`` when it is given."""
    if format == "onnx" and weights == "int8":
        train = load_dataset(data, splits=("train",), progress=progress)["train"]
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:CALIBRATION_FACES]
        log(f"int8: activation ranges from {len(pick)} training faces and their mirror images")
        quantized = int8_onnx_bytes(model, meta, train.images[pick])
        return atomic_write(out, lambda tmp: Path(tmp).write_bytes(quantized))
    if format == "onnx":
        return export_onnx(model, meta, out)
    margin = meta.crop_margin if crop_margin is None else crop_margin
    meta = meta.replace(crop_margin=margin, name=name or default_name, tta=tta or meta.tta, training=provenance)
    if weights == "int8":
        modelfile.quantize_weights(model)  # calibrate and score the weights the file will hold
    if data is not None:
        splits = load_dataset(data, splits=("val", "test"), progress=progress)
        meta = calibrate(model, meta, splits["val"], splits["test"], class_bias, log, resolve_device(device))
        model.to("cpu")
    return modelfile.save(model, meta, out, weights, source=source)
