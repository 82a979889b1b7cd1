"""The ``ferkit`` command: argument parsing only; the work is done by the Python API.

Only the command being run has its arguments built and its modules loaded: ``ferkit --help`` and a
mistyped command load no model code.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ferkit.errors import FerkitError


def _data_path(arg: str | None) -> str:
    if arg is not None and not arg.strip():
        raise FerkitError("--data is empty: pass the path of the data set")
    if arg:
        return arg
    if os.environ.get("FERKIT_DATA"):
        return os.environ["FERKIT_DATA"]
    raise FerkitError("no data given: pass --data PATH or set FERKIT_DATA")


def cmd_train(args: argparse.Namespace) -> int:
    from ferkit.engine.train import train_run

    overrides = args.overrides + (["skip_bad=true"] if args.skip_bad else [])
    data = args.data if args.resume and args.data is None else _data_path(args.data)
    run_dir, result = train_run(args.config, overrides, data, args.out, args.resume,
                                command=" ".join(["ferkit"] + sys.argv[1:]), progress=not args.no_progress)
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
            raise FerkitError(f"--no-detect is an option of photo folders, not of --data-format {args.format}")
        options["detect"] = False
    return options


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ferkit.engine.evaluate import evaluate_file

    evaluate_file(args.checkpoint, _data_path(args.data), args.split, tta=args.tta, precision=args.precision,
                  batch_size=args.batch_size, device=args.device, out=args.out, reader=_reader_options(args),
                  skip_bad=args.skip_bad, progress=not args.no_progress)
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from ferkit.analysis.crossval import cross_validate, load_pool
    from ferkit.engine.train import load_train_config

    cfg, name = load_train_config(args.config, args.overrides + (["skip_bad=true"] if args.skip_bad else []))
    data = _data_path(args.data)
    out = Path(args.out) if args.out else Path("runs") / f"cv-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Read the data before writing anything, so bad data leaves no half-made folder.
    pool = load_pool(cfg, data, progress=not args.no_progress, **_reader_options(args))
    # The command as it reruns this cross-validation, output folder included.
    command = shlex.join(
        ["ferkit", "cv", *(["--config", args.config] if args.config else []), "--data", data,
         "--folds", str(args.folds), "--out", str(out), *(["--data-format", args.format] if args.format else []),
         *(["--no-detect"] if args.no_detect else []), *(["--skip-bad"] if args.skip_bad else []), *args.overrides])
    print(f"cv folder: {out}; to continue it, run: {command}")
    result = cross_validate(cfg, pool, out, args.folds, command=command, progress=not args.no_progress)
    print(result.summary())
    saved = [out / name for name in ("cv.json", "pooled.md", "pooled.png") if (out / name).is_file()]
    print(f"saved {', '.join(map(str, saved))}")
    return 0


def _recognizer_options(args: argparse.Namespace):
    """The Recognizer options ``ferkit predict``'s flags give, for either engine."""
    from ferkit.engine.options import RecognizerOptions

    return RecognizerOptions(backend=args.backend, detect=not args.no_detect, batch_size=args.batch_size,
                             detector=args.detector, min_face=args.min_face, detect_size=args.detect_size,
                             tta=args.tta)


def _recognizer(args: argparse.Namespace, device: str):
    from ferkit.engine.predict import Recognizer

    return Recognizer.load(args.model, _recognizer_options(args), device=device)


def _flags(*names: str) -> dict[str, str]:
    """Option names as the command line spells them, for messages: ``batch_size`` -> ``--batch-size``."""
    return {name: "--" + name.replace("_", "-") for name in names}


RESULT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def _results_file(out: str | None, format: str | None) -> tuple[Path | None, str]:
    """Where results go (None: stdout) and in which format; checked before any model is loaded."""
    if out is None:
        if format == "parquet":
            raise FerkitError("--format parquet writes a file: give it with --out FILE.parquet")
        return None, format or "table"
    path = Path(out)
    if path.exists() or path.is_symlink():
        raise FerkitError(f"--out {out}: already exists; ferkit never overwrites a file, choose a new name")
    if not path.parent.is_dir():
        raise FerkitError(f"--out {out}: no folder {path.parent} to write it in")
    chosen = format or RESULT_SUFFIXES.get(path.suffix.lower())
    if chosen is None:
        raise FerkitError(f"--out {out}: say the format with --format (or name the file .csv, .jsonl or .parquet)")
    return path, chosen


def _predict_ray(args: argparse.Namespace) -> int:
    """``ferkit predict --engine ray``: the sources on a Ray cluster (or this machine), into a folder of shards."""
    from ferkit.scale import predict_to_folder
    from ferkit.scale.listing import SHARD_SIZE

    for flag, given in (("--save", args.save), ("--plot", args.plot)):
        if given:
            raise FerkitError(f"{flag} is not available with --engine ray (it writes Parquet shards only); run "
                              "`ferkit predict` without --engine ray for annotated copies")
    if args.out is None:
        raise FerkitError("--engine ray writes a folder of Parquet shards: give it with --out DIR")
    if args.format not in (None, "parquet"):
        raise FerkitError(f"--engine ray writes Parquet, not {args.format}")
    counts = predict_to_folder(args.sources, args.out, args.model, _recognizer_options(args), device=args.device, stride=args.stride,
                               smooth=args.smooth, address=args.address, actors=args.actors,
                               threads_per_actor=args.threads_per_actor,
                               shard_size=SHARD_SIZE if args.shard_size is None else args.shard_size,
                               progress=not args.no_progress, command=shlex.join(["ferkit", *sys.argv[1:]]),
                               inputs_from=args.inputs_from)
    print(counts.line(), file=sys.stderr)
    return 1 if counts.errors or counts.failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ferkit.engine.options import check_options
    from ferkit.engine.runtime import resolve_device
    from ferkit.engine.sources import ResultWriter, RunSummary, SaveFolder, expand_sources, predict_sources
    from ferkit.fileio import PLOTS_EXTRA, can_draw

    # File names that are not valid UTF-8 must not end the run when printed.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    check_options(batch_size=args.batch_size, min_face=args.min_face, detect_size=args.detect_size, tta=args.tta,
                  detector=args.detector, stride=args.stride, smooth=args.smooth,
                  spelled=_flags("batch_size", "min_face", "detect_size", "tta", "detector", "stride", "smooth"))
    if not args.sources and args.inputs_from is None:
        raise FerkitError("give the inputs: image files, folders, videos or a webcam index, or --inputs-from FILE")
    if args.engine == "ray":
        return _predict_ray(args)
    names = list(args.sources)
    if args.inputs_from is not None:
        from ferkit.scale.listing import check_input_list, read_input_lines

        check_input_list(args.inputs_from)
        names += read_input_lines(args.inputs_from)
    for flag in ("address", "actors", "threads_per_actor", "shard_size"):
        if getattr(args, flag) is not None:
            raise FerkitError(f"--{flag.replace('_', '-')} is an option of --engine ray")
    out, format = _results_file(args.out, args.format)  # before any folder or model
    device = str(resolve_device(args.device))
    if args.plot and not can_draw():
        raise FerkitError(f"--plot draws with matplotlib: {PLOTS_EXTRA}")
    save = SaveFolder(args.save) if args.save else None
    recognizer = _recognizer(args, device)
    print(recognizer.describe(), file=sys.stderr)
    summary = RunSummary()
    videos: dict[str, list[dict]] = {}  # --plot: each video's records, for its timeline
    sources = expand_sources(names)
    try:
        if format == "parquet":
            stream = open(out, "xb")
        else:
            stream = open(out, "x", newline="" if format == "csv" else None, encoding="utf-8") if out else sys.stdout
    except OSError as e:
        raise FerkitError(f"--out {out}: cannot create ({e.strerror})") from None
    try:
        writer = ResultWriter(stream, format, recognizer.classes)
        for result in predict_sources(recognizer, sources, args.batch_size, args.stride, args.smooth, save,
                                      progress=not args.no_progress):
            summary.add(result)
            writer.write(result)
            if args.plot and result.frame is not None:
                videos.setdefault(result.source, []).append(result.to_dict())
        writer.close()
    finally:
        if out:
            stream.close()
    for video, records in videos.items():
        from ferkit.analysis.timeline import plot_timeline

        relative = next(s.relative for s in sources if s.location == video)
        try:
            path = plot_timeline(records, (save or SaveFolder(".")).claim(relative, "_timeline.png"), video)
            print(f"wrote {path}", file=sys.stderr)
        except FerkitError as e:
            print(f"{video}: no timeline ({e})", file=sys.stderr)
    hint = summary.hint() if recognizer.detect else None
    if hint:
        print(hint, file=sys.stderr)
    print(summary.line(save) + (f"; results in {out}" if out else ""), file=sys.stderr)
    return 1 if summary.errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    from ferkit.engine.export import export

    out = export(args.checkpoint, args.out, format=args.format, weights=args.weights, crop_margin=args.crop_margin,
                 tta=args.tta, name=args.name, data=args.data, class_bias=args.class_bias,
                 progress=not args.no_progress, device=args.device)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ferkit.paper.reproduce import reproduce

    written = reproduce(args.table, _data_path(args.data), args.budget, args.seeds, args.out, args.results,
                        progress=not args.no_progress)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if args.kind == "curves":
        from ferkit.engine.curves import plot_curves

        print(f"wrote {plot_curves(args.targets, args.out or 'curves.png', args.title)}")
    elif args.kind == "timeline":
        from ferkit.analysis.timeline import plot_timeline, read_results

        if len(args.targets) != 1:
            raise FerkitError("plot timeline: give one results file of `ferkit predict` (.jsonl or .csv)")
        print(f"wrote {plot_timeline(read_results(args.targets[0]), args.out or 'timeline.png', args.source)}")
    elif args.kind == "attention":
        from ferkit.analysis.attention_maps import attention_picture

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
        from ferkit.analysis.features import feature_picture

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
    from ferkit.data import data_formats
    from ferkit.data.augment import TTA_MODES
    from ferkit.detect import list_detectors
    from ferkit.engine.modelfile import shipped_models
    from ferkit.losses import list_losses
    from ferkit.models import list_models
    from ferkit.models.attention import ATTENTION_LAYERS
    from ferkit.models.resnet import STEMS
    from ferkit.precision import PRECISIONS

    for name, values in (("shipped models", shipped_models()), ("models", list_models()), ("stems", STEMS),
                         ("attention", ATTENTION_LAYERS),
                         ("losses", list_losses()), ("test-time views", TTA_MODES), ("precisions", PRECISIONS),
                         ("detectors", list_detectors()), ("data formats", data_formats()),
                         ("configs", shipped_configs())):
        print(f"{name + ':':17}{', '.join(values)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    from ferkit.serve.settings import API_KEY_ENV, ServeConfig, read_api_key

    needed = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
    missing = [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise FerkitError(f"ferkit serve needs {', '.join(missing)}: pip install \"ferkit[serve]\"")
    from ferkit.serve.app import run_server

    if args.api_key is not None:
        raise FerkitError("--api-key: a key on the command line is readable by every user of this machine "
                          f"(ps); put it in ${API_KEY_ENV} or in a file given as --api-key-file")
    api_key = read_api_key(args.api_key_file) if args.api_key_file else os.environ.get(API_KEY_ENV) or None
    config = ServeConfig(model=args.model, backend=args.backend, device=args.device, host=args.host, port=args.port,
                         workers=args.workers, api_key=api_key,
                         cors=tuple(args.cors), batching=not args.no_batching, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, max_upload_mb=args.max_upload_mb,
                         max_files=args.max_files, pixel_budget=args.pixel_budget, header_timeout_s=args.header_timeout,
                         upload_timeout_s=args.upload_timeout, refusal_delay_s=args.refusal_delay)
    run_server(config)
    return 0


def _add_reader_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.data import data_formats

    p.add_argument("--data-format", "--format", dest="format", metavar="{" + ",".join(data_formats()) + "}",
                   help="the data set's format, when detection picks the wrong one")
    p.add_argument("--no-detect", action="store_true", help="photo folders: the photos are face crops already")


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when the error stream is a file or a pipe, as in a log)")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file or shipped config name (see `ferkit models`)")
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--out", help="run folder (default: runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report how many")
    _add_progress(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_train)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.data import SPLITS
    from ferkit.data.dataset import ALL
    from ferkit.data.augment import TTA_MODES
    from ferkit.precision import PRECISIONS

    p.add_argument("checkpoint")
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--split", default="test", choices=(*SPLITS, ALL),
                   help="the split to score (default: test); all: every image of the data set")
    p.add_argument("--tta", choices=TTA_MODES, help="default: the run's setting")
    p.add_argument("--precision", choices=PRECISIONS, help="default: the run's setting")
    p.add_argument("--batch-size", type=int, default=512, help="images per model call (default: 512)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: the best there is)")
    p.add_argument("--out", help="output prefix for .json/.md/.png (default: next to the checkpoint)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report how many")
    _add_reader_arguments(p)
    _add_progress(p)
    p.set_defaults(func=cmd_evaluate)


def _cv_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file or shipped config name (see `ferkit models`)")
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--folds", type=int, default=10, help="number of folds (default 10)")
    p.add_argument("--out", help="cv folder (default: runs/cv-<config>-<time>); an existing one is continued")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report how many")
    _add_reader_arguments(p)
    _add_progress(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_cv)


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.data.augment import TTA_MODES
    from ferkit.detect import describe_detectors
    from ferkit.engine.options import BACKENDS, RecognizerOptions
    from ferkit.engine.runtime import DEVICES
    from ferkit.engine.sources import OUTPUT_FORMATS

    defaults = RecognizerOptions()
    detectors = describe_detectors()
    p.add_argument("sources", nargs="*", help="image files, folders (recursive), video files, webcam index")
    p.add_argument("--inputs-from", metavar="FILE",
                   help="also read the inputs named in FILE, one path (or, with --engine ray, URI) a line")
    p.add_argument("--model", default="default", help="shipped model name, or a .pt / .safetensors file")
    p.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="how results are written (default: table, or from the --out file's suffix)")
    p.add_argument("--out", metavar="FILE", help="write the results to FILE, a new file (default: the terminal)")
    p.add_argument("--save", metavar="DIR", help="write annotated images / videos here")
    p.add_argument("--plot", action="store_true",
                   help="videos: draw each person's expressions over time, one picture per video (in --save DIR, "
                        "else here)")
    p.add_argument("--no-detect", action="store_true", help="inputs are already face crops")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="auto: onnxruntime on a CPU when installed, else torch")
    p.add_argument("--tta", choices=TTA_MODES, help="default: the model's setting")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="faces per model call")
    p.add_argument("--detector", choices=list(detectors), default=defaults.detector,
                   help="face detector: " + "; ".join(f"{name}: {text}" for name, text in detectors.items()))
    p.add_argument("--min-face", type=int, default=defaults.min_face,
                   help="smallest face to detect, pixels of the photo (blazeface tiles the photo for small ones)")
    p.add_argument("--detect-size", type=int, default=defaults.detect_size,
                   help="Haar detectors: search a copy this large (longer side; 0 = full size)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where the model runs: auto (a CUDA GPU, else MPS, else the CPU) or one of them by name")
    p.add_argument("--stride", type=int, default=1, help="video: use every N-th frame")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="video: weight of the previous frame, 0 <= SMOOTH < 1")
    ray = p.add_argument_group("scale-out (--engine ray; needs pip install \"ferkit[ray]\")")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process; ray: Ray Data actors, locally or on a cluster, into --out DIR "
                          "(Parquet shards; rerun the same command to resume)")
    ray.add_argument("--address", help="a running Ray cluster (e.g. HEAD:6379, or auto); default: start Ray here")
    ray.add_argument("--actors", type=int, help="model copies at work (default: the cluster's CPUs / threads)")
    ray.add_argument("--threads-per-actor", type=int, help="cores each actor uses (default 1)")
    ray.add_argument("--shard-size", type=int, help="images per output shard (default 256)")
    _add_progress(p)
    p.set_defaults(func=cmd_predict)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.data.augment import TTA_MODES
    from ferkit.engine.export import FORMATS
    from ferkit.engine.modelfile import DEFAULT_CROP_MARGIN, WEIGHT_DTYPES
    from ferkit.engine.runtime import DEVICES

    p.add_argument("checkpoint", metavar="MODEL", nargs="+",
                   help="a checkpoint (.pt), a model file or a shipped model's name; several (same architecture, "
                        "input and classes) are joined as one ensemble that averages their logits (needs --out)")
    p.add_argument("--to", "--format", dest="format", choices=FORMATS, default="ferkit",
                   help="the kind of file to write: a ferkit model file or ONNX")
    p.add_argument("--out", help="output file (default: next to the source; a shipped model's in this folder)")
    p.add_argument("--weights", choices=WEIGHT_DTYPES,
                   help="ferkit files: how weights are stored (default int8); ONNX: fp32 (default) or int8, "
                        "quantised statically with activations calibrated on --data's training faces")
    p.add_argument("--data", help="fit the temperature on this data's val split, score on its test split")
    p.add_argument("--no-class-bias", dest="class_bias", action="store_false",
                   help="with --data: leave out the logit adjustment for rare classes fitted on val")
    p.add_argument("--crop-margin", type=float,
                   help=f"face-box margin the model expects (default: the model file's own; {DEFAULT_CROP_MARGIN} for a checkpoint)")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time views stored with the model")
    p.add_argument("--name", help="model name stored in the file (default: the file's stem)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="with --data: where the model scores the val and test splits (default: cpu)")
    _add_progress(p)
    p.set_defaults(func=cmd_export)


def _reproduce_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.paper.reproduce import BUDGETS, TABLE_ORDER

    p.add_argument("table", choices=(*TABLE_ORDER, "all"))
    p.add_argument("--data", help="data set path (default: $FERKIT_DATA)")
    p.add_argument("--budget", required=True, metavar="{" + ",".join(BUDGETS) + "}",
                   help="cpu: stem=imagenet epochs=8, ~2 h for tables 1 + 5 on 2 CPU cores; "
                        "full: the configs as shipped (200 epochs), a GPU job")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="train seeds 0..N-1 of every row")
    p.add_argument("--out", default="runs/reproduce", help="run folders go to OUT/<budget>/<row>_seed<k>/")
    p.add_argument("--results", default="results/reproduce", help="records and tables go to RESULTS/<budget>/")
    _add_progress(p)
    p.set_defaults(func=cmd_reproduce)


def _plot_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.analysis.features import PROJECTIONS
    from ferkit.data import SPLITS

    p.add_argument("kind", choices=("features", "attention", "curves", "timeline"))
    p.add_argument("targets", nargs="+", help="checkpoint (+ images for attention), run folders for curves, or "
                                              "a results file of `ferkit predict` on a video for timeline")
    p.add_argument("--source", help="timeline: the video to draw, when the results hold several")
    p.add_argument("--out", help="output PNG (features: output prefix)")
    p.add_argument("--data", help="features: data set path (default: $FERKIT_DATA)")
    p.add_argument("--split", default="test", choices=SPLITS, help="features: the split to draw (default: test)")
    p.add_argument("--max-points", type=int, default=3000, help="features: images drawn at most (default: 3000)")
    p.add_argument("--method", default="auto", choices=PROJECTIONS, help="features: how to draw them in 2-d")
    p.add_argument("--seed", type=int, default=0, help="features: which images are drawn, and the projection")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], help="attention: stages to show")
    p.add_argument("--no-detect", action="store_true", help="attention: images are face crops")
    p.add_argument("--title", help="curves: figure title")
    _add_progress(p)
    p.set_defaults(func=cmd_plot)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from ferkit.engine.options import BACKENDS
    from ferkit.engine.runtime import DEVICES
    from ferkit.serve.settings import ServeConfig

    serve_defaults = ServeConfig()
    p.add_argument("--model", default=serve_defaults.model, help="shipped model name, or a .pt / .safetensors file")
    p.add_argument("--host", default=serve_defaults.host, help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=serve_defaults.port, help=f"(default: {serve_defaults.port})")
    p.add_argument("--workers", type=int, default=serve_defaults.workers,
                   help="processes, each with its own model")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require the key in FILE on /v1/* (default: $FERKIT_API_KEY; neither: open)")
    p.add_argument("--api-key", help=argparse.SUPPRESS)  # refused: other users could read it in the process list
    p.add_argument("--cors", nargs="+", default=[], metavar="ORIGIN", help="browser origins allowed (default: none)")
    p.add_argument("--backend", choices=BACKENDS, default=serve_defaults.backend,
                   help="auto: onnxruntime on a CPU when installed, else torch")
    p.add_argument("--device", default=serve_defaults.device, choices=DEVICES,
                   help="where the model runs: auto (a CUDA GPU, else MPS, else the CPU) or one of them by name")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-batch", type=int, default=serve_defaults.max_batch,
                   help="images per model call, at most")
    p.add_argument("--max-wait-ms", type=float, default=serve_defaults.max_wait_ms,
                   help="how long the first waiting request waits for others to share its model call")
    p.add_argument("--queue-size", type=int, default=serve_defaults.queue_size,
                   help="requests waiting for the model; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=serve_defaults.max_upload_mb, help="size limit per image")
    p.add_argument("--max-files", type=int, default=serve_defaults.max_files,
                   help="images per request, at most")
    p.add_argument("--pixel-budget", type=int, default=serve_defaults.pixel_budget,
                   help="pixels decoded at once over all requests, and the most one request may hold (over: 413)")
    p.add_argument("--header-timeout", type=float, default=serve_defaults.header_timeout_s,
                   help="seconds a client may take to send a request's line and headers (slower: 408, closed)")
    p.add_argument("--upload-timeout", type=float, default=serve_defaults.upload_timeout_s,
                   help="seconds a client may take to send a request body (slower: 408)")
    p.add_argument("--refusal-delay", type=float, default=serve_defaults.refusal_delay_s,
                   help="seconds before a refused upload (413: too large, too many images or pixels) is answered, "
                        "so a client sending them in a loop costs the server little")
    p.set_defaults(func=cmd_serve)


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_models)


# The commands: (one-line help, longer description or None, the function that adds its arguments).
COMMANDS: dict[str, tuple[str, str | None, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train a model", "Train a model; key=value overrides the config.", _train_arguments),
    "evaluate": ("score a checkpoint on a data split", None, _evaluate_arguments),
    "cv": ("k-fold cross-validation",
           "Train and score one model per fold (by subject where the data has subjects); key=value overrides the "
           "config. Rerun with the same --out to continue.", _cv_arguments),
    "predict": ("expressions of the faces in images, folders, videos or a webcam", None, _predict_arguments),
    "export": ("convert a checkpoint (or join several as an ensemble) to the ferkit model format or ONNX", None,
               _export_arguments),
    "reproduce": ("rerun the paper's Tables 1, 2 and 5 beside its numbers",
                  "Train every row of the paper's table(s) for seeds 0..N-1 under a budget and write the tables "
                  "with the paper's numbers, curves and confusion matrices. Rerun the same command to continue: "
                  "finished runs are skipped, an interrupted one is resumed.", _reproduce_arguments),
    "plot": ("pictures: feature space, attention maps, training curves, emotion over time in a video",
             "ferkit plot features CKPT --data PATH | attention CKPT IMAGE... | curves RUN... | timeline RESULTS",
             _plot_arguments),
    "serve": ("HTTP API and web page (needs the serve extra)",
              "Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, docs at /docs and "
              "a web page at /.", _serve_arguments),
    "models": ("list what is registered (models, layers, losses, detectors, ...) and shipped", None,
               _models_arguments),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``ferkit`` command, with the arguments of ``commands`` (default: all).

    Every command is listed; only those named get their arguments, so only their modules are loaded.
    """
    wanted = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"ferkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (summary, description, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".")
        if name in wanted:
            add_arguments(p)
    return parser


def _on_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a closed or replaced stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the ``ferkit`` command; user errors print one line and return a non-zero status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser([command] if command in COMMANDS else []).parse_args(argv)
    if getattr(args, "no_progress", True) is False and not _on_terminal(sys.stderr):
        args.no_progress = True  # a bar redrawn into a log file is thousands of lines of carriage returns
    try:
        return args.func(args)
    except FerkitError as e:
        print(f"ferkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferkit: interrupted", file=sys.stderr)
        return 130
