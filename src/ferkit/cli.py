"""The ``ferkit`` command: argument parsing only; the work is done by the Python API."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ferkit.errors import FerkitError


def _data_path(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("FERKIT_DATA"):
        return os.environ["FERKIT_DATA"]
    raise FerkitError("no data given: pass --data PATH or set FERKIT_DATA")


def cmd_train(args: argparse.Namespace) -> int:
    from ferkit.config import load_config
    from ferkit.engine.train import load_training_data, resume_config, train

    if args.resume:
        run_dir = Path(args.resume)
        cfg = resume_config(run_dir)
        if args.overrides:
            raise FerkitError("--resume continues a run with its saved config; overrides are not allowed")
        saved = run_dir / "data_path.txt"
        data = _data_path(args.data or (saved.read_text().strip() if saved.is_file() else None))
    else:
        cfg = load_config(args.config, args.overrides + (["skip_bad=true"] if args.skip_bad else []))
        data = _data_path(args.data)
        name = Path(args.config).stem if args.config else "default"
        run_dir = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "last.pt").exists():
            raise FerkitError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
    # Read the data before writing anything, so bad data leaves no half-made run folder.
    splits = load_training_data(cfg, data, progress=not args.no_progress)
    if not args.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data_path.txt").write_text(str(Path(data).resolve()) + "\n")
        (run_dir / "command.txt").write_text(" ".join(["ferkit"] + sys.argv[1:]) + "\n")
    print(f"run folder: {run_dir}")
    result = train(cfg, splits, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    print(f"done: {result.epochs_done} epochs, best val {result.best_val_acc:.2%} at epoch {result.best_epoch}"
          + (f", test {result.test_acc:.2%}" if result.test_acc is not None else "")
          + f"; checkpoints in {run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ferkit.data import load_dataset
    from ferkit.engine.checkpoint import load_checkpoint, load_model
    from ferkit.engine.evaluate import evaluate, write_report
    from ferkit.engine.train import resolve_device

    state = load_checkpoint(args.checkpoint)
    cfg = state.get("config", {})
    tta = args.tta or cfg.get("tta", "flip")
    precision = args.precision or cfg.get("precision", "fp32")
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    splits = load_dataset(_data_path(args.data), splits=(args.split,), skip_bad=args.skip_bad,
                          val_fraction=cfg.get("val_fraction", 0.1), seed=cfg.get("seed", 0),
                          progress=not args.no_progress)
    dataset = splits[args.split]
    if dataset.note:
        print(f"{args.split}: {dataset.note}")
    if dataset.skipped:
        print(f"{args.split}: skipped {dataset.skipped} unreadable images")
    report, nll = evaluate(model, dataset, meta, tta, args.batch_size, precision,
                           cfg.get("channels_last", True) and device.type != "mps")
    title = f"{Path(args.checkpoint).name} on {dataset.source} ({args.split}, tta {tta})"
    print(report.to_markdown(title))
    prefix = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval_{args.split}"
    write_report(report, prefix, title, {
        "checkpoint": str(args.checkpoint), "data": str(dataset.source), "split": args.split, "tta": tta,
        "precision": precision, "nll": nll, "torch": torch.__version__,
    })
    print(f"saved {prefix}.json, {prefix}.md and {prefix}.png")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ferkit.config import shipped_configs
    from ferkit.models import list_models

    print("models:  " + ", ".join(list_models()))
    print("configs: " + ", ".join(shipped_configs()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ferkit`` command."""
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model", description="Train a model; key=value overrides the config.")
    p.add_argument("--config", help="YAML file or shipped config name (see `ferkit models`)")
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--out", help="run folder (default: runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report how many")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on a data split")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), help="default: the run's setting")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), help="default: the run's setting")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output prefix for .json/.md/.png (default: next to the checkpoint)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report how many")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list registered models and shipped configs")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ferkit`` command; user errors print one line and return a non-zero status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FerkitError as e:
        print(f"ferkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferkit: interrupted", file=sys.stderr)
        return 130
