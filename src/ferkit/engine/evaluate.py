"""Scoring a model on a data split: batched inference with test-time augmentation, metrics, reports."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ferkit.data import FERDataset
from ferkit.data.names import CLASS_SYNONYMS, class_index
from ferkit.engine.inference import predict_logits, probabilities
from ferkit.engine.metrics import ClassificationReport, reliability_bins, save_confusion_png, save_reliability_png
from ferkit.engine.modelfile import ModelMeta
from ferkit.errors import FerkitError
from ferkit.fileio import PLOTS_EXTRA, can_draw, write_json, write_text

def align_classes(dataset: FERDataset, classes: list[str], source: str) -> None:
    """Fail with a clear message unless the data set's classes are the model's (same names, same order)."""
    if list(dataset.classes) != list(classes):
        raise FerkitError(
            f"{source}: model classes {list(classes)} do not match data classes {list(dataset.classes)}"
        )


@dataclass(frozen=True)
class ClassMapping:
    """How a data set's classes were matched to a model's by name (any case, synonyms allowed)."""

    mapped: dict[str, str]  # data class -> model class
    left_out: dict[str, int]  # data class the model does not know -> its images left out

    def lines(self) -> list[str]:
        """What was matched and what was left out, for printing."""
        out = ["classes (data -> model): " + ", ".join(f"{d} -> {m}" for d, m in self.mapped.items())]
        if self.left_out:
            out.append("left out, unknown to the model: "
                       + ", ".join(f"{name} ({count} images)" for name, count in self.left_out.items()))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"mapped": dict(self.mapped), "left_out": dict(self.left_out)}


def map_classes(dataset: FERDataset, classes: list[str] | tuple[str, ...]) -> tuple[FERDataset, ClassMapping]:
    """``dataset`` relabelled in the model's ``classes`` by name, without the images of classes the model lacks.

    Names match in any case and through the synonym table (anger = angry, happiness = happy, ...).
    The result's classes are the model's, so a prediction of a class the data lacks counts as
    wrong. Raises FerkitError when no data class is known to the model.
    """
    canonical = [CLASS_SYNONYMS.get(name.lower(), name.lower()) for name in classes]
    targets = [class_index(name, canonical) for name in dataset.classes]
    counts = dataset.class_counts()
    mapping = ClassMapping(
        mapped={name: classes[t] for name, t in zip(dataset.classes, targets) if t is not None},
        left_out={name: counts[name] for name, t in zip(dataset.classes, targets) if t is None},
    )
    if not mapping.mapped:
        raise FerkitError(f"{dataset.source}: none of the data classes {list(dataset.classes)} is one of "
                          f"the model's classes {list(classes)}")
    lookup = torch.tensor([-1 if t is None else t for t in targets], dtype=torch.int64)
    labels = lookup[dataset.labels]
    if not bool((labels >= 0).any()):
        raise FerkitError(f"{dataset.source}: no images of a class the model knows ({', '.join(mapping.mapped)})")
    kept = dataset.subset(labels >= 0)
    # Soft labels are distributions over the data's classes, which the model's classes replace.
    mapped = dataclasses.replace(kept, labels=labels[labels >= 0], classes=tuple(classes), soft_labels=None)
    return mapped, mapping


def evaluate(
    model: nn.Module,
    dataset: FERDataset,
    meta: ModelMeta,
    tta: str = "flip",
    batch_size: int = 512,
    precision: str = "bf16",
    channels_last: bool = True,
) -> tuple[ClassificationReport, float]:
    """The classification report and mean negative log-likelihood of ``model`` on ``dataset``."""
    align_classes(dataset, meta.classes, dataset.source)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = predict_logits(model, dataset.images, meta, tta, batch_size, precision, channels_last, device)
    model.train(was_training)
    probs = probabilities(logits, meta)
    targets = dataset.labels.to(probs.device)
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), targets).item() if len(targets) else math.nan
    report = ClassificationReport.from_predictions(probs.argmax(1).cpu(), targets.cpu(), list(meta.classes))
    if len(targets):
        report.reliability = reliability_bins(probs.cpu(), targets.cpu())
    return report, nll


def write_report(report: ClassificationReport, out_prefix: str | Path, title: str, extra: dict[str, Any]) -> str:
    """Save ``<prefix>.json`` (report plus ``extra`` provenance), ``<prefix>.md`` and, where matplotlib is
    installed, the confusion matrix as ``<prefix>.png`` and the reliability diagram as
    ``<prefix>_reliability.png``; returns a line saying what was written."""
    out_prefix = Path(out_prefix)
    write_json({**extra, "report": report.to_dict()}, out_prefix.with_suffix(".json"))
    write_text(report.to_markdown(title) + "\n", out_prefix.with_suffix(".md"))
    if not can_draw():
        return f"saved {out_prefix}.json and {out_prefix}.md (for the pictures: {PLOTS_EXTRA})"
    saved = [out_prefix.with_suffix(".json"), out_prefix.with_suffix(".md"), out_prefix.with_suffix(".png")]
    save_confusion_png(report, saved[-1], title=title)
    if report.reliability:
        saved.append(out_prefix.with_name(out_prefix.name + "_reliability.png"))
        save_reliability_png(report, saved[-1], title=title)
    return f"saved {', '.join(map(str, saved))}"


def evaluate_file(checkpoint: str | Path, data: str | Path, split: str = "test", *, tta: str | None = None,
                  precision: str | None = None, batch_size: int = 512, device: str = "auto",
                  out: str | Path | None = None, reader: dict[str, Any] | None = None, skip_bad: bool = False,
                  progress: bool = True, log: Callable[[str], None] = print) -> ClassificationReport:
    """Score a checkpoint (.pt) or model file (.safetensors) on ``split`` of the data set at ``data``.

    Test-time views and precision default to the run's (or the model file's); a checkpoint's run also
    gives the val split's fraction and seed. A data set with other classes is scored on the images of the
    classes the model knows. Saves ``<out>.json`` / ``.md`` / ``.png`` (default: ``eval_<split>`` beside
    the checkpoint); ``reader`` holds reader options such as ``format``.
    """
    from ferkit.data import PhotoDataset, load_dataset
    from ferkit.engine import modelfile
    from ferkit.engine.runtime import resolve_device, usable_precision
    from ferkit.fileio import check_writable

    prefix = Path(out) if out else Path(checkpoint).parent / f"eval_{split}"
    check_writable(prefix.parent)  # fail now, not after the scoring
    dev = resolve_device(device)
    if Path(checkpoint).suffix == ".safetensors":
        (model, meta), cfg = modelfile.load(checkpoint, dev), {}
    else:  # a training checkpoint, read once: its run's config gives the defaults below
        state = modelfile.load_checkpoint(checkpoint)
        meta, cfg = modelfile.ModelMeta.from_dict(state["meta"], checkpoint), state.get("config", {})
        model = modelfile.model_from(meta, state["model"], checkpoint, dev)
    tta = tta or cfg.get("tta") or meta.tta
    precision, why = usable_precision(dev, precision or cfg.get("precision", "fp32"))
    if why:
        log(why)
    dataset = load_dataset(data, splits=(split,), skip_bad=skip_bad, val_fraction=cfg.get("val_fraction", 0.1),
                           seed=cfg.get("seed", 0), progress=progress, **(reader or {}))[split]
    if dataset.note:  # it names its split itself where that matters
        log(dataset.note)
    if dataset.skipped:
        log(f"{split}: skipped {dataset.skipped} unreadable images")
    extra: dict[str, Any] = {}
    rejected = list(dataset.rejected) if isinstance(dataset, PhotoDataset) else []
    if rejected:
        extra["rejected"] = rejected
        log(f"{split}: left out {len(rejected)} photos:")
        for line in rejected[:10]:
            log(f"  {line}")
        if len(rejected) > 10:
            log(f"  ... and {len(rejected) - 10} more (all listed in the saved JSON)")
    if list(dataset.classes) != list(meta.classes):
        # Another data set's classes: score the model on the images of the classes it knows.
        dataset, mapping = map_classes(dataset, meta.classes)
        for line in mapping.lines():
            log(line)
        extra["class_mapping"] = mapping.to_dict()
    report, nll = evaluate(model, dataset, meta, tta, batch_size, precision,
                           cfg.get("channels_last", True) and dev.type != "mps")
    title = f"{Path(checkpoint).name} on {dataset.source} ({split}, tta {tta})"
    log(report.to_markdown(title))
    log(write_report(report, prefix, title, {
        "checkpoint": str(checkpoint), "data": str(dataset.source), "split": split, "tta": tta,
        "precision": precision, "nll": nll, "torch": torch.__version__, **extra,
    }))
    return report

