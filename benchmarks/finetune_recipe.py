"""Fine-tuning a shipped model on a small data set: which recipe, chosen on validation only.

A user's own expression set (posed lab faces, a clinic's camera) is small: CK+ has 927 images. This
benchmark carves data sets of that size from FER2013's PublicTest faces with FER+'s majority labels
(other annotators, cleaner labels: a shifted labelling of faces the shipped model never trained on),
fine-tunes the shipped model on each with every recipe asked for, and scores each on the same
held-out PublicTest faces. PrivateTest is never read: this chooses a recipe, it is not a test figure.

Each subset is split into train and val (``val_fraction`` of every class) as ``ferkit cv`` splits a
fold; the epoch kept is the best on that val (the last epoch's score is given beside it). One JSON line per (recipe, subset), then one per recipe
with the mean and sample standard deviation over subsets; ``none`` scores the init model as it is. A
recipe's overrides apply to the ``finetune`` recipe with the init model's architecture (what
``ferkit train init=...`` trains with), or to ``--config``.

    python benchmarks/finetune_recipe.py --ferplus path/to/fer2013_ferplus --out results/finetune_recipe.json \\
        --recipe "issue: stem=s2 epochs=12 lr=0.02 warmup_epochs=0.5" --recipe "low_lr: ... lr=0.005"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import write_record  # noqa: E402

from ferkit.config import config_to_dict  # noqa: E402
from ferkit.data import FER_CLASSES, FERDataset, load_dataset  # noqa: E402
from ferkit.data.dataset import stratified_split  # noqa: E402
from ferkit.engine.evaluate import evaluate  # noqa: E402
from ferkit.engine.modelfile import load, load_checkpoint, model_path  # noqa: E402
from ferkit.engine.train import FINETUNE_RECIPE, Trainer, load_train_config  # noqa: E402


def carve(data: FERDataset, subsets: int, size: int, holdout: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Disjoint random index sets: ``subsets`` of ``size`` images each, and ``holdout`` others."""
    need = subsets * size + holdout
    if need > len(data):
        raise SystemExit(f"{subsets} x {size} + {holdout} images asked for; the split has {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    parts = [order[holdout + i * size: holdout + (i + 1) * size].sort().values for i in range(subsets)]
    return parts, order[:holdout].sort().values


def recipe(spec: str) -> tuple[str, list[str]]:
    """``"name: key=value key=value"`` -> (name, overrides)."""
    name, _, rest = spec.partition(":")
    if not name.strip() or not rest.strip():
        raise SystemExit(f"--recipe {spec!r}: expected 'name: key=value ...'")
    return name.strip(), shlex.split(rest)


def line_of(name: str, subset: int | str, report, extra: dict) -> dict:
    return {"benchmark": "finetune_recipe", "recipe": name, "subset": subset,
            "accuracy": round(report.accuracy, 4), "mean_class_accuracy": round(report.mean_class_accuracy, 4),
            "per_class_accuracy": {k: round(v, 4) for k, v in report.per_class_accuracy.items() if v is not None},
            **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ferplus", type=Path, required=True, help="FER+: fer2013new.csv beside fer2013.csv")
    parser.add_argument("--init", default="default", help="the model fine-tuned: shipped name or model file")
    parser.add_argument("--recipe", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                        help="a recipe as config overrides (repeat); the init model is scored as 'none' too")
    parser.add_argument("--config", help=f"config the overrides apply to (default: the {FINETUNE_RECIPE!r} recipe "
                                         "with the init model's architecture, as `ferkit train init=...` takes it)")
    parser.add_argument("--subsets", type=int, default=2, help="small data sets carved, each fine-tuned on")
    parser.add_argument("--size", type=int, default=900, help="images in each (CK+ has 927)")
    parser.add_argument("--holdout", type=int, default=1000, help="held-out PublicTest faces every run is scored on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the carving and of every run")
    parser.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--out", help="also write every line with provenance to this JSON file")
    args = parser.parse_args(argv)
    recipes = [recipe(s) for s in args.recipe]

    data = load_dataset(args.ferplus, format="ferplus", splits=("val",), classes=7, progress=False)["val"]
    if tuple(data.classes) != FER_CLASSES:
        raise SystemExit(f"{args.ferplus}: classes {data.classes}, expected {FER_CLASSES}")
    parts, held = carve(data, args.subsets, args.size, args.holdout, args.seed)
    holdout = dataclasses.replace(data.subset(held), split="test")
    figures, configs = [], {}

    model, meta = load(model_path(args.init))
    report, _ = evaluate(model, holdout, meta, meta.tta, 512, "fp32", False)
    figures.append(line_of("none", "all", report, {"images": len(holdout)}))
    print(json.dumps(figures[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        for name, overrides in recipes:
            cfg, _ = load_train_config(args.config, [f"init={args.init}", f"seed={args.seed}", *overrides],
                                       log=lambda message: None)
            configs[name] = config_to_dict(cfg)
            scores, lasts = [], []
            for i, part in enumerate(parts):
                train, val = stratified_split(data.labels[part], cfg.val_fraction, args.seed)
                if len(val) == 0:
                    raise SystemExit(f"{name}: val_fraction={cfg.val_fraction} leaves no validation images in a "
                                     f"set of {args.size}; raise --size or val_fraction")
                splits = {"train": dataclasses.replace(data.subset(part[train]), split="train"),
                          "val": dataclasses.replace(data.subset(part[val]), split="val"), "test": holdout}
                start = time.perf_counter()
                trainer = Trainer(cfg, splits, runs / f"{name}_{i}", log=lambda message: None, progress=False)
                run = trainer.fit()
                report, _ = trainer.score("test")  # the best epoch on val, as a run keeps it
                trainer.model.load_state_dict(load_checkpoint(runs / f"{name}_{i}" / "last.pt")["model"])
                last, _ = trainer.score("test")  # the last epoch: no choice made on a small val split
                scores.append(report)
                lasts.append(last.accuracy)
                figures.append(line_of(name, i, report, {
                    "last_epoch_accuracy": round(last.accuracy, 4),
                    "train_images": len(train), "val_images": len(val), "best_epoch": run.best_epoch,
                    "best_val_acc": round(run.best_val_acc, 4), "seconds": round(time.perf_counter() - start, 1)}))
                print(json.dumps(figures[-1]), flush=True)
            accs = [r.accuracy for r in scores]
            figures.append({"benchmark": "finetune_recipe", "recipe": name, "subset": "mean",
                            "overrides": overrides, "accuracy": round(statistics.mean(accs), 4),
                            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                            "mean_class_accuracy": round(statistics.mean(r.mean_class_accuracy for r in scores), 4),
                            "last_epoch_accuracy": round(statistics.mean(lasts), 4)})
            print(json.dumps(figures[-1]), flush=True)
            if args.out:  # after every recipe: a sweep cut short keeps what it measured
                write_record(args.out, "finetune_recipe", figures, base=args.config or FINETUNE_RECIPE,
                             seed=args.seed, init=args.init, subsets=args.subsets, size=args.size,
                             holdout=args.holdout, configs=configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
