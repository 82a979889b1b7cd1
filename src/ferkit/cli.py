"""The ``ferkit`` command: argument parsing only; the work is done by the Python API."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from ferkit.detect.faces import DEFAULT_DETECTOR, list_detectors
from ferkit.errors import FerkitError
from ferkit.serve.settings import ServeConfig


def _data_path(arg: str | None) -> str:
    if arg is not None and not arg.strip():
        raise FerkitError("--data is empty: pass the path of the data set")
    if arg:
        return arg
    if os.environ.get("FERKIT_DATA"):
        return os.environ["FERKIT_DATA"]
    raise FerkitError("no data given: pass --data PATH or set FERKIT_DATA")


def cmd_train(args: argparse.Namespace) -> int:
    from ferkit.config import load_config
    from ferkit.engine.train import load_training_data, resume_config, train
    from ferkit.fileio import write_text

    if args.resume:
        run_dir = Path(args.resume)
        given = [flag for flag, value in (("--config", args.config), ("--out", args.out)) if value is not None]
        if given:
            raise FerkitError(f"--resume continues {run_dir} with its saved config in that folder; "
                              f"leave out {' and '.join(given)}")
        cfg = resume_config(run_dir)
        if args.overrides:
            raise FerkitError("--resume continues a run with its saved config; overrides are not allowed")
        saved = run_dir / "data_path.txt"
        data = _data_path(args.data if args.data is not None else
                          saved.read_text().strip() if saved.is_file() else None)
    else:
        cfg = load_config(args.config, args.overrides + (["skip_bad=true"] if args.skip_bad else []))
        data = _data_path(args.data)
        name = Path(args.config).stem if args.config else "default"
        run_dir = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "last.pt").exists():
            raise FerkitError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
        left = [file for file in ("best.pt", "metrics.jsonl", "final.json") if (run_dir / file).exists()]
        if left:
            raise FerkitError(f"{run_dir}: holds {', '.join(left)} of an earlier run but no last.pt to resume "
                              "from; choose another --out, or delete that folder to start again")
    # Read the data before writing anything, so bad data leaves no half-made run folder.
    splits = load_training_data(cfg, data, progress=not args.no_progress)
    if not args.resume:
        write_text(str(Path(data).resolve()) + "\n", run_dir / "data_path.txt")
        write_text(" ".join(["ferkit"] + sys.argv[1:]) + "\n", run_dir / "command.txt")
    print(f"run folder: {run_dir}")
    result = train(cfg, splits, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    print(f"done: {result.epochs_done} epochs, best val {result.best_val_acc:.2%} at epoch {result.best_epoch}"
          + (f", test {result.test_acc:.2%}" if result.test_acc is not None else "")
          + f"; checkpoints in {run_dir}")
    return 0


def _reader_options(args: argparse.Namespace) -> dict:
    """Reader options from --format and --no-detect (which means a photo folder of face crops)."""
    options: dict = {}
    if args.format or args.no_detect:
        options["format"] = args.format or "photos"
    if args.no_detect:
        if options["format"] != "photos":
            raise FerkitError(f"--no-detect is an option of photo folders, not of --format {args.format}")
        options["detect"] = False
    return options


def _print_rejected(name: str, dataset, shown: int = 10) -> list[str]:
    """Print the photos a photo folder's split left out (the first ``shown``); return them all."""
    from ferkit.data import PhotoDataset

    rejected = list(dataset.rejected) if isinstance(dataset, PhotoDataset) else []
    if rejected:
        print(f"{name}: left out {len(rejected)} photos:")
        for line in rejected[:shown]:
            print(f"  {line}")
        if len(rejected) > shown:
            print(f"  ... and {len(rejected) - shown} more (all listed in the saved JSON)")
    return rejected


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ferkit.data import load_dataset
    from ferkit.engine.checkpoint import load_checkpoint, load_model
    from ferkit.engine.evaluate import evaluate, map_classes, write_report
    from ferkit.engine.train import resolve_device
    from ferkit.fileio import check_writable

    prefix = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval_{args.split}"
    check_writable(prefix.parent)  # fail now, not after the scoring
    state = load_checkpoint(args.checkpoint)
    cfg = state.get("config", {})
    tta = args.tta or cfg.get("tta", "flip")
    precision = args.precision or cfg.get("precision", "fp32")
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    splits = load_dataset(_data_path(args.data), splits=(args.split,), skip_bad=args.skip_bad,
                          val_fraction=cfg.get("val_fraction", 0.1), seed=cfg.get("seed", 0),
                          progress=not args.no_progress, **_reader_options(args))
    dataset = splits[args.split]
    if dataset.note:
        print(f"{args.split}: {dataset.note}")
    if dataset.skipped:
        print(f"{args.split}: skipped {dataset.skipped} unreadable images")
    rejected = _print_rejected(args.split, dataset)
    extra: dict = {"rejected": rejected} if rejected else {}
    if list(dataset.classes) != list(meta["classes"]):
        # Another data set's classes: score the model on the images of the classes it knows.
        dataset, mapping = map_classes(dataset, meta["classes"])
        for line in mapping.lines():
            print(line)
        extra["class_mapping"] = mapping.to_dict()
    report, nll = evaluate(model, dataset, meta, tta, args.batch_size, precision,
                           cfg.get("channels_last", True) and device.type != "mps")
    title = f"{Path(args.checkpoint).name} on {dataset.source} ({args.split}, tta {tta})"
    print(report.to_markdown(title))
    write_report(report, prefix, title, {
        "checkpoint": str(args.checkpoint), "data": str(dataset.source), "split": args.split, "tta": tta,
        "precision": precision, "nll": nll, "torch": torch.__version__, **extra,
    })
    print(f"saved {prefix}.json, {prefix}.md and {prefix}.png")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from ferkit.config import load_config
    from ferkit.engine.crossval import cross_validate, load_pool

    cfg = load_config(args.config, args.overrides + (["skip_bad=true"] if args.skip_bad else []))
    data = _data_path(args.data)
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.out) if args.out else Path("runs") / f"cv-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Read the data before writing anything, so bad data leaves no half-made folder.
    pool = load_pool(cfg, data, progress=not args.no_progress, **_reader_options(args))
    # The command as it reruns this cross-validation, output folder included.
    command = shlex.join(
        ["ferkit", "cv", *(["--config", args.config] if args.config else []), "--data", data,
         "--folds", str(args.folds), "--out", str(out), *(["--format", args.format] if args.format else []),
         *(["--no-detect"] if args.no_detect else []), *(["--skip-bad"] if args.skip_bad else []), *args.overrides])
    print(f"cv folder: {out}; to continue it, run: {command}")
    result = cross_validate(cfg, pool, out, args.folds, command=command, progress=not args.no_progress)
    print(result.summary())
    print(f"saved {out / 'cv.json'}, {out / 'pooled.md'} and {out / 'pooled.png'}")
    return 0


def _int_at_least(low: int):
    """An argparse type: a whole number >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _recognizer(args: argparse.Namespace):
    from ferkit.engine.predict import PRETRAINED, Recognizer

    options = dict(backend=args.backend, detect=not args.no_detect, batch_size=args.batch_size,
                   detector=args.detector, min_face=args.min_face, detect_size=args.detect_size, tta=args.tta)
    if args.model in PRETRAINED or not Path(args.model).suffix:
        return Recognizer.from_pretrained(args.model, **options)
    return Recognizer.from_checkpoint(args.model, **options)


def _print_table(result, out) -> None:
    if result.status != "ok":
        print(f"{result.source}: {result.status}" + (f" ({result.error})" if result.error else ""), file=out)
    for n, face in enumerate(result.faces):
        top = sorted(face.probs.items(), key=lambda kv: -kv[1])[:3]
        ranked = "  ".join(f"{k} {v:.2f}" for k, v in top)
        print(f"{result.source}  face {n + 1} at {face.box}: {face.top1} {face.top1conf:.0%}   ({ranked})", file=out)


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from tqdm.auto import tqdm

    from ferkit.engine.predict import Result
    from ferkit.engine.sources import expand_sources

    from ferkit.engine.sources import SaveFolder

    # File names that are not valid UTF-8 must not end the run when printed.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    save = SaveFolder(args.save) if args.save else None
    recognizer = _recognizer(args)
    print(recognizer.describe(), file=sys.stderr)
    sources = expand_sources(args.sources)
    writer = None
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["source", "status", "detector", "face", "track", "x", "y", "w", "h", "label", "confidence",
                         *recognizer.classes])
    failed = 0

    def emit(result: Result) -> None:
        nonlocal failed
        failed += result.status == "error"
        if args.format == "jsonl":
            print(json.dumps(result.to_dict()))
        elif writer is not None:
            head = [result.source, result.status, result.detector or ""]
            if not result.faces:
                writer.writerow([*head, *[""] * (8 + len(recognizer.classes))])
            for n, f in enumerate(result.faces):
                writer.writerow([*head, n + 1, "" if f.track is None else f.track, *f.box, f.top1,
                                 f"{f.top1conf:.4f}", *(f"{f.probs[c]:.4f}" for c in recognizer.classes)])
        else:
            _print_table(result, sys.stdout)

    images = [s for s in sources if s.kind == "image"]
    for start in tqdm(range(0, len(images), args.batch_size), desc="images", unit="batch",
                      disable=len(images) <= args.batch_size or args.no_progress):
        chunk = images[start : start + args.batch_size]
        readable = [s for s in chunk if s.error is None]
        results = {id(s): r for s, r in zip(readable, recognizer([s.location for s in readable]))}
        for s in chunk:
            result = results.get(id(s)) or Result(s.location, status="error", error=s.error)
            if save and result.image is not None:
                try:
                    save.write_image(result.plot(), s.relative)
                except (FerkitError, OSError) as e:
                    result.status, result.error = "error", f"--save: {e}"
            emit(result)
    for source in (s for s in sources if s.kind != "image"):
        _predict_video(recognizer, source, args, save, emit)
    return 1 if failed else 0


def _predict_video(recognizer, source, args: argparse.Namespace, save, emit) -> None:
    import cv2
    import numpy as np
    from tqdm.auto import tqdm

    from ferkit.engine.predict import Result
    from ferkit.engine.sources import iter_video

    out, frames = None, 0
    total = None
    if source.kind == "video":
        probe = cv2.VideoCapture(source.location)
        total = int(probe.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        fps = probe.get(cv2.CAP_PROP_FPS) or 25.0
        probe.release()
    else:
        fps = 25.0
    bar = tqdm(total=total, desc=Path(source.location).name, unit="frame", disable=args.no_progress)
    try:
        for index, frame, result in iter_video(recognizer, source, args.stride, smooth=args.smooth):
            frames += 1
            bar.update(index + 1 - bar.n)
            emit(result)
            if save:
                result.image = frame
                annotated = cv2.cvtColor(np.asarray(result.plot()), cv2.COLOR_RGB2BGR)
                result.image = None
                if out is None:
                    name = save.claim(source.relative, ".mp4")
                    out = cv2.VideoWriter(str(name), cv2.VideoWriter_fourcc(*"mp4v"), fps / args.stride,
                                          (annotated.shape[1], annotated.shape[0]))
                out.write(annotated)
    except (OSError, FerkitError) as e:
        emit(Result(source.location, status="error", error=str(e)))
        return
    finally:
        bar.close()
        if out is not None:
            out.release()
    if frames == 0:
        emit(Result(source.location, status="error", error=f"{source.location}: no frames could be read"))


def cmd_export(args: argparse.Namespace) -> int:
    from ferkit.engine.checkpoint import check_meta
    from ferkit.engine.export import check_not_input, export_onnx, quantize_weights, save_ferkit_model
    from ferkit.engine.predict import load_any_model

    suffix = ".onnx" if args.format == "onnx" else ".safetensors"
    out = Path(args.out or Path(args.checkpoint).with_suffix(suffix))
    check_not_input(out, args.checkpoint)  # before anything is loaded or written
    model, meta = load_any_model(args.checkpoint)
    if args.format == "onnx":
        export_onnx(model, meta, out)
    else:
        meta = {**meta, "crop_margin": args.crop_margin, "name": args.name or Path(args.checkpoint).stem,
                "tta": args.tta or meta.get("tta", "flip"),
                "training": _run_provenance(Path(args.checkpoint).parent)}
        check_meta(meta, "export options")  # a bad --crop-margin fails now, not after calibration
        if args.weights == "int8":
            quantize_weights(model)  # calibrate and score the weights the file will hold
        if args.data:
            meta = _calibrate(model, meta, args)
        save_ferkit_model(model, meta, out, args.weights, source=args.checkpoint)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _run_facts(run_dir: Path) -> dict:
    """How the run in ``run_dir`` was made, from the files ``ferkit train`` leaves there (empty if none)."""
    info: dict = {}
    if (run_dir / "command.txt").is_file():
        info["command"] = (run_dir / "command.txt").read_text().strip()
    if (run_dir / "final.json").is_file():
        final = json.loads((run_dir / "final.json").read_text())
        keep = ("git_commit", "hardware", "seed", "epochs_done", "best_epoch", "wall_s", "val_acc", "test_acc")
        info.update({k: final[k] for k in keep if k in final}, config=final.get("config"))
    return info


def _run_provenance(run_dir: Path) -> dict:
    """:func:`_run_facts` of a run, each run its weights came from (``init=``) nested under ``started_from``."""
    from ferkit.engine.report import init_chain

    info = node = _run_facts(run_dir)
    if (run_dir / "final.json").is_file():
        for parent in init_chain(json.loads((run_dir / "final.json").read_text())):
            node["started_from"] = node = _run_facts(parent)
    return info


def _calibrate(model, meta: dict, args: argparse.Namespace) -> dict:
    """Fit the temperature on validation data; score accuracy and calibration on test data."""
    import torch

    from ferkit.data import load_dataset
    from ferkit.engine.calibrate import adjusted_logits, balanced_score, fit_class_bias, fit_temperature, nll
    from ferkit.engine.evaluate import align_classes, predict_logits
    from ferkit.engine.metrics import expected_calibration_error

    splits = load_dataset(args.data, splits=("val", "test"), progress=not args.no_progress)
    tta = meta["tta"]
    scores = {}
    for name, split in splits.items():
        align_classes(split, meta["classes"], split.source)
        logits = predict_logits(model, split.images, meta, tta, 512, "fp32", False)
        scores[name] = (logits, split.labels)
    meta = {key: value for key, value in meta.items() if key not in ("class_bias", "temperature")}
    balance = {}
    if args.class_bias:
        # The rare classes' prior: the training counts the checkpoint records, else the val split's.
        val_logits, val_labels = scores["val"]
        prior = meta.get("class_counts") or torch.bincount(val_labels, minlength=len(meta["classes"])).tolist()
        tau, bias = fit_class_bias(val_logits, val_labels, torch.tensor(prior, dtype=torch.float32))
        balance = {"class_bias": bias, "class_bias_tau": tau}
        meta = {**meta, "class_bias": bias}
        print(f"class bias: tau {tau:.1f} (-tau * log prior, chosen on val)")
    scores = {name: (adjusted_logits(logits, meta), labels) for name, (logits, labels) in scores.items()}
    temperature = fit_temperature(*scores["val"])
    logits, labels = scores["test"]
    probs_before, probs_after = torch.softmax(logits, 1), torch.softmax(logits / temperature, 1)
    calibration = {
        "temperature": temperature, "fitted_on": "val",
        "test_nll_before": nll(logits, labels), "test_nll_after": nll(logits, labels, temperature),
        "test_ece_before": expected_calibration_error(probs_before, labels),
        "test_ece_after": expected_calibration_error(probs_after, labels),
        **balance,
    }
    val_acc, val_mean = balanced_score(*scores["val"])
    test_acc, test_mean = balanced_score(logits, labels)
    print(f"temperature {temperature:.3f}: test NLL {calibration['test_nll_before']:.4f} -> "
          f"{calibration['test_nll_after']:.4f}, ECE {calibration['test_ece_before']:.4f} -> "
          f"{calibration['test_ece_after']:.4f}; val {val_acc:.2%} (mean per class {val_mean:.2%}), "
          f"test {test_acc:.2%} (mean per class {test_mean:.2%}) (tta {tta})")
    return {**meta, "temperature": temperature, "calibration": calibration, "tta": tta,
            "val_acc": val_acc, "test_acc": test_acc, "val_mean_class_acc": val_mean, "test_mean_class_acc": test_mean}


def cmd_report(args: argparse.Namespace) -> int:
    from ferkit.engine.report import plot_frontier, record_run, update_readme

    if args.action == "record":
        for run in args.runs:
            print(f"wrote {record_run(run, args.results, args.group)}")
    else:
        picture = plot_frontier(args.results)
        if picture is not None:
            print(f"wrote {picture}")
        changed = update_readme(args.readme, args.results)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ferkit.engine.reproduce import reproduce

    written = reproduce(args.table, _data_path(args.data), args.budget, args.seeds, args.out, args.results,
                        progress=not args.no_progress)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if args.kind == "curves":
        from ferkit.engine.plots import plot_curves

        print(f"wrote {plot_curves(args.targets, args.out or 'curves.png', args.title)}")
    elif args.kind == "attention":
        from ferkit.engine.attention_maps import attention_picture

        checkpoint, *images = args.targets
        if not images:
            raise FerkitError("plot attention: give a checkpoint and at least one image")
        out = args.out or "attention.png"
        for row in attention_picture(checkpoint, images, out, tuple(args.stages), not args.no_detect):
            note = f" ({row['note']})" if row.get("note") else ""
            print(f"{row['source']}: {row['label']} {row['confidence']:.0%}{note}")
        print(f"wrote {out}")
    else:
        from ferkit.data import load_dataset
        from ferkit.engine.features import feature_picture

        (checkpoint,) = args.targets
        dataset = load_dataset(_data_path(args.data), splits=(args.split,), progress=not args.no_progress)[args.split]
        prefix = Path(args.out) if args.out else Path(checkpoint).parent / f"features_{args.split}"
        info = feature_picture(checkpoint, dataset, prefix, args.max_points, args.seed, args.method)
        stats = info["stats"]
        print(f"{info['method']} of {info['n']} features: intra/inter distance {stats['intra_inter_ratio']:.3f}, "
              f"center cosine {stats['center_cosine']:.3f} (centred {stats['center_cosine_centred']:.3f}); "
              f"wrote {prefix}.png and {prefix}.json")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ferkit.config import shipped_configs
    from ferkit.models import list_models

    print("models:  " + ", ".join(list_models()))
    print("configs: " + ", ".join(shipped_configs()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    from ferkit.serve.settings import API_KEY_ENV

    needed = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
    missing = [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise FerkitError(f"ferkit serve needs {', '.join(missing)}: pip install \"ferkit[serve]\"")
    from ferkit.serve.app import run_server

    config = ServeConfig(model=args.model, backend=args.backend, host=args.host, port=args.port,
                         workers=args.workers, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                         cors=tuple(args.cors), batching=not args.no_batching, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, max_upload_mb=args.max_upload_mb,
                         max_files=args.max_files, upload_timeout_s=args.upload_timeout)
    run_server(config)
    return 0


def _add_reader_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="data format, when detection picks the wrong one (e.g. photos, ckplus48)")
    p.add_argument("--no-detect", action="store_true", help="photo folders: the photos are face crops already")


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
    _add_reader_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cv", help="k-fold cross-validation",
                       description="Train and score one model per fold (by subject where the data has subjects); "
                                   "key=value overrides the config. Rerun with the same --out to continue.")
    p.add_argument("--config", help="YAML file or shipped config name (see `ferkit models`)")
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--folds", type=int, default=10, help="number of folds (default 10)")
    p.add_argument("--out", help="cv folder (default: runs/cv-<config>-<time>); an existing one is continued")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report how many")
    _add_reader_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("predict", help="expressions of the faces in images, folders, videos or a webcam")
    p.add_argument("sources", nargs="+", help="image files, folders (recursive), video files, webcam index")
    p.add_argument("--model", default="default", help="shipped model name, or a .pt / .safetensors file")
    p.add_argument("--format", choices=("table", "jsonl", "csv"), default="table")
    p.add_argument("--save", metavar="DIR", help="write annotated images / videos here")
    p.add_argument("--no-detect", action="store_true", help="inputs are already face crops")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto: onnxruntime on a CPU when installed, else torch")
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), help="default: the model's setting")
    p.add_argument("--batch-size", type=_int_at_least(1), default=64, help="faces per model call")
    p.add_argument("--detector", choices=list_detectors(), default=DEFAULT_DETECTOR,
                   help="face detector: blazeface (MediaPipe's, shipped) or OpenCV's Haar cascades")
    p.add_argument("--min-face", type=_int_at_least(1), default=48,
                   help="smallest face to detect, pixels of the photo (blazeface tiles the photo for small ones)")
    p.add_argument("--detect-size", type=_int_at_least(0), default=320,
                   help="Haar detectors: search a copy this large (longer side; 0 = full size)")
    p.add_argument("--stride", type=_int_at_least(1), default=1, help="video: use every N-th frame")
    p.add_argument("--smooth", type=_fraction, default=0.0,
                   help="video: weight of the previous frame, 0 <= SMOOTH < 1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="convert a checkpoint to the ferkit model format or ONNX")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("ferkit", "onnx"), default="ferkit")
    p.add_argument("--out", help="output file (default: next to the checkpoint)")
    p.add_argument("--weights", choices=("int8", "fp16", "fp32"), default="int8",
                   help="how conv/linear weights are stored (ferkit format)")
    p.add_argument("--data", help="fit the temperature on this data's val split, score on its test split")
    p.add_argument("--no-class-bias", dest="class_bias", action="store_false",
                   help="with --data: leave out the logit adjustment for rare classes fitted on val")
    p.add_argument("--crop-margin", type=float, default=0.1, help="face-box margin the model expects")
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), help="test-time views stored with the model")
    p.add_argument("--name", help="model name stored in the file (default: the file's stem)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="record finished runs under results/ and regenerate the README tables")
    p.add_argument("action", choices=("record", "readme"))
    p.add_argument("runs", nargs="*", help="run folders to record")
    p.add_argument("--group", default="fer2013", help="results/<group>/ for recorded runs")
    p.add_argument("--results", default="results")
    p.add_argument("--readme", default="README.md")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="rerun the paper's Tables 1, 2 and 5 beside its numbers",
                       description="Train every row of the paper's table(s) for seeds 0..N-1 under a budget and "
                                   "write the tables with the paper's numbers, curves and confusion matrices. "
                                   "Rerun the same command to continue: finished runs are skipped, an "
                                   "interrupted one is resumed.")
    p.add_argument("table", choices=("table1", "table2", "table5", "all"))
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--budget", required=True, metavar="{cpu,full}",
                   help="cpu: stem=imagenet epochs=8, ~2 h for tables 1 + 5 on 2 CPU cores; "
                        "full: the configs as shipped (200 epochs), a GPU job")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="train seeds 0..N-1 of every row")
    p.add_argument("--out", default="runs/reproduce", help="run folders go to OUT/<budget>/<row>_seed<k>/")
    p.add_argument("--results", default="results/reproduce", help="records and tables go to RESULTS/<budget>/")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("plot", help="pictures: feature space, attention maps, training curves",
                       description="ferkit plot features CKPT --data PATH | attention CKPT IMAGE... | curves RUN...")
    p.add_argument("kind", choices=("features", "attention", "curves"))
    p.add_argument("targets", nargs="+", help="checkpoint (+ images for attention), or run folders for curves")
    p.add_argument("--out", help="output PNG (features: output prefix)")
    p.add_argument("--data", help="features: data set path (default: $FERKIT_DATA)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-points", type=int, default=3000)
    p.add_argument("--method", default="auto", help="features: auto | tsne | umap | pca")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], help="attention: stages to show")
    p.add_argument("--no-detect", action="store_true", help="attention: images are face crops")
    p.add_argument("--title", help="curves: figure title")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_plot)

    serve_defaults = ServeConfig()
    p = sub.add_parser("serve", help="HTTP API and web page (needs the serve extra)",
                       description="Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, "
                                   "/readyz, docs at /docs and a web page at /.")
    p.add_argument("--model", default="default", help="shipped model name, or a .pt / .safetensors file")
    p.add_argument("--host", default=serve_defaults.host, help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=_int_at_least(0), default=serve_defaults.port)
    p.add_argument("--workers", type=_int_at_least(1), default=serve_defaults.workers,
                   help="processes, each with its own model")
    p.add_argument("--api-key", help="require this key on /v1/* (default: $FERKIT_API_KEY; none: open)")
    p.add_argument("--cors", nargs="+", default=[], metavar="ORIGIN", help="browser origins allowed (default: none)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-batch", type=_int_at_least(1), default=serve_defaults.max_batch,
                   help="images per model call, at most")
    p.add_argument("--max-wait-ms", type=float, default=serve_defaults.max_wait_ms,
                   help="how long the first waiting request waits for others to share its model call")
    p.add_argument("--queue-size", type=_int_at_least(1), default=serve_defaults.queue_size,
                   help="requests waiting for the model; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=serve_defaults.max_upload_mb, help="size limit per image")
    p.add_argument("--max-files", type=_int_at_least(1), default=serve_defaults.max_files,
                   help="images per request, at most")
    p.add_argument("--upload-timeout", type=float, default=serve_defaults.upload_timeout_s,
                   help="seconds a client may take to send a request body (slower: 408)")
    p.set_defaults(func=cmd_serve)

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
