"""Training throughput: ferkit's on-device step against a conventional DataLoader pipeline.

For each stem of ResNet-18 + CBAM (1 x 48 x 48 input, 7 classes), on the same machine, batch and optimizer:

(a) ``ferkit``: :class:`ferkit.engine.train.Trainer`'s own ``train_epoch`` -- data held on the device as uint8,
    per-step ``prepare`` + batched ``Augment``, autocast (``--precision``), channels_last; with ``--compile``
    also eager against its model under torch.compile, in one process, in alternating rounds;
(b) ``conventional``: a map-style Dataset of decoded PIL images with per-image PIL/numpy transforms
    (reflect-padded random crop, rotation, flip, to-tensor, normalise), a DataLoader with ``--workers``
    processes, fp32, contiguous memory.

Every configuration runs in a fresh subprocess so its peak resident memory is its own. One JSON line per
figure: the matrix-multiply peak of each dtype used, each pipeline's step, and their ratio.

    python benchmarks/train_throughput.py                      # full run, both stems
    python benchmarks/train_throughput.py --quick --stems cifar
    python benchmarks/train_throughput.py --precision fp32 --no-channels-last   # ablations of (a)
    python benchmarks/train_throughput.py --out results/train_throughput.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from ferkit.config import TrainConfig
from ferkit.data import FER_CLASSES, FERDataset, load_dataset
from ferkit.data.augment import prepare
from ferkit.engine.runtime import autocast, cpu_name, git_commit, hardware, resolve_device
from ferkit.engine.train import Trainer
from ferkit.models import create_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FER2013_TRAIN_IMAGES = 28709  # size of the synthetic set unless --images says otherwise
QUICK = {"batch": 16, "steps": 2, "warmup": 1, "images": 256, "matmul_size": 512}
FULL = {"batch": 128, "steps": 20, "warmup": 3, "images": FER2013_TRAIN_IMAGES}


# -- measuring ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock brackets it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mib(kib: int) -> float:
    """KiB (as ``ru_maxrss`` counts on Linux) to MiB."""
    return round(kib / 1024, 1)


def reset_peak_rss() -> bool:
    """Restart this process's resident-memory high-water mark (Linux); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def count_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> int:
    """FLOPs of one forward + backward of ``model`` on the batch ``x`` (convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter:
        with autocast(x.device, precision):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, samples: int = 5) -> dict[str, Any]:
    """Best FLOP/s of ``torch.mm`` on n x n matrices of ``dtype``: the reference for the achieved FLOP/s."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def timed(repeats: int) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        sync(device)
        return (time.perf_counter() - start) / repeats

    timed(2)
    # Enough multiplications per sample that a fast device is not timed by the host clock's resolution.
    repeats = max(1, int(0.05 / max(timed(1), 1e-6)))
    best = min(timed(repeats) for _ in range(samples))
    return {"matmul_size": n, "matmul_s": best, "peak_tflop_s": 2 * n**3 / best / 1e12}


# -- data --------------------------------------------------------------------------------------------
def training_split(args: argparse.Namespace) -> FERDataset:
    """The train split of ``--data``, or ``--images`` random 48 x 48 grey images with random labels."""
    if args.data:
        return load_dataset(args.data, progress=False)["train"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, 48, 48), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, len(FER_CLASSES), (args.images,), generator=generator)
    return FERDataset(images, labels, FER_CLASSES, "train", "synthetic")


def full_batches(n: int, batch: int, count: int) -> list[tuple[int, int]]:
    """``count`` full-batch (start, end) windows over ``n`` samples, wrapping round when ``n`` is small."""
    if n < batch:
        raise SystemExit(f"{n} training images are fewer than one batch of {batch}; use --images or --batch")
    windows = [(i * batch, (i + 1) * batch) for i in range(n // batch)]
    return [windows[i % len(windows)] for i in range(count)]


class ConventionalDataset(torch.utils.data.Dataset):
    """Decoded PIL images transformed one at a time, the way a torchvision-style pipeline does it."""

    def __init__(self, split: FERDataset, cfg: TrainConfig):
        arrays = split.images.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]
        self.labels = split.labels.tolist()
        self.size, self.pad, self.degrees = cfg.input_size, cfg.pad, cfg.degrees
        self.mean, self.std = cfg.mean, cfg.std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if image.mode != "L":
            image = image.convert("L")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        # Random crop with reflect padding, as ferkit's Augment does it.
        padded = np.pad(np.asarray(image), self.pad, mode="reflect")
        dy, dx = random.randint(0, 2 * self.pad), random.randint(0, 2 * self.pad)
        image = Image.fromarray(padded[dy : dy + self.size, dx : dx + self.size])
        image = image.rotate(random.uniform(-self.degrees, self.degrees), resample=Image.Resampling.BILINEAR)
        if random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        return ((x - self.mean) / self.std).unsqueeze(0), self.labels[i]


def endless(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


# -- the two pipelines -------------------------------------------------------------------------------
def ferkit_precision(args: argparse.Namespace, stem: str) -> tuple[str, bool]:
    """ferkit's (precision, channels_last) for ``stem``: as given, or with ``auto`` what the configs use.

    ``auto``: bf16 + channels_last on CUDA, and on the CPU for the stems with large maps (cifar, s2);
    fp32 in contiguous memory on the CPU for the imagenet stem, whose 12-px maps train faster so here
    (configs/fer2013_cpu_60min.yaml). ``--channels-last`` unset follows the precision.
    """
    precision = args.precision
    if precision == "auto":
        cpu = resolve_device(args.device).type == "cpu"
        precision = "fp32" if cpu and stem == "imagenet" else "bf16"
    channels_last = args.channels_last
    if channels_last is None:
        channels_last = precision != "fp32" or resolve_device(args.device).type == "cuda"
    return precision, channels_last


def base_config(args: argparse.Namespace, stem: str, compiled: bool = False) -> TrainConfig:
    """The training config both pipelines share: ResNet-18 + CBAM, ``stem``, the batch and the machine."""
    precision, channels_last = ferkit_precision(args, stem)
    return TrainConfig(model="resnet18", attention="cbam", stem=stem, in_chans=1, batch_size=args.batch,
                       precision=precision, channels_last=channels_last, compile=compiled,
                       threads=args.threads, device=args.device, epochs=1, seed=0)


def bench_trainer(cfg: TrainConfig, split: FERDataset, run_dir: str | Path) -> Trainer:
    """A Trainer of ``cfg`` on ``split`` (a one-image validation split: only training steps are timed)."""
    return Trainer(cfg, {"train": split, "val": split.subset(torch.arange(1))}, run_dir,
                   log=lambda message: print(message, file=sys.stderr), progress=False)


def train_steps(trainer: Trainer, steps: int) -> dict[str, float]:
    """``Trainer.train_epoch`` over ``steps`` full batches of its training set (its figures: epoch_s, loss...)."""
    trainer.bounds = full_batches(len(trainer.images), trainer.cfg.batch_size, steps)
    trainer.steps_per_epoch = steps
    return trainer.train_epoch()


def run_ferkit(args: argparse.Namespace, stem: str) -> dict[str, Any]:
    """Pipeline (a): Trainer.train_epoch over ``--steps`` batches, plus its data part timed on its own."""
    cfg = base_config(args, stem)
    split = training_split(args)
    timed = full_batches(len(split), args.batch, args.steps)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = bench_trainer(cfg, split, run_dir)
        device = trainer.device
        x, y = ferkit_data(trainer, torch.arange(*timed[0], device=device))
        flops = count_flops(trainer.model, x, y, cfg.precision)
        del x, y
        setup_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reset = reset_peak_rss()
        if args.warmup:
            train_steps(trainer, args.warmup)
        stats = train_steps(trainer, args.steps)  # its clock stops after a device sync (the loss sums go to the host)
        data_s = time_ferkit_data(trainer, timed)
        steps_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if args.profile:
            profile(lambda: train_steps(trainer, args.profile), device)
        if trainer.writer is not None:
            trainer.writer.close()
    step_s = stats["epoch_s"] / args.steps
    return {"step_s": step_s, "data_s": data_s, "flops_per_step": flops, "threads": torch.get_num_threads(),
            "device": str(device), **memory(setup_kib, steps_kib, reset, None, device)}


COMPILE_ROUNDS = 4  # alternating rounds of eager and compiled steps: a shared machine's drift falls on both


def run_compile(args: argparse.Namespace, stem: str) -> dict[str, Any]:
    """Pipeline (a) eager and with its model under torch.compile, in one process: each compiled in its own
    untimed warmup steps (the compile's time kept), then ``--steps`` timed steps of each in alternating rounds."""
    split = training_split(args)
    with tempfile.TemporaryDirectory() as run_dir:
        trainers = {name: bench_trainer(base_config(args, stem, compiled), split, Path(run_dir) / name)
                    for name, compiled in (("eager", False), ("compiled", True))}
        warmup_s = {name: train_steps(trainer, max(args.warmup, 1))["epoch_s"] for name, trainer in trainers.items()}
        rounds: dict[str, list[float]] = {name: [] for name in trainers}
        per_round = max(1, args.steps // COMPILE_ROUNDS)
        for _ in range(COMPILE_ROUNDS):
            for name, trainer in trainers.items():
                rounds[name].append(train_steps(trainer, per_round)["epoch_s"] / per_round)
        for trainer in trainers.values():
            if trainer.writer is not None:
                trainer.writer.close()
    return {"step_s": {name: sorted(times)[len(times) // 2] for name, times in rounds.items()},
            "rounds_s": rounds, "warmup_s": warmup_s, "steps_per_round": per_round,
            "threads": torch.get_num_threads()}


def ferkit_data(trainer: Trainer, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The data part of Trainer.train_epoch's step: index the device tensors, ``prepare``, augment, layout."""
    cfg = trainer.cfg
    y = trainer.labels[idx]
    x = prepare(trainer.images[idx], trainer.meta.in_chans, cfg.input_size, cfg.mean, cfg.std)
    x = trainer.augment(x, trainer.aug_gen)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def time_ferkit_data(trainer: Trainer, windows: list[tuple[int, int]]) -> float:
    """Mean seconds of the data part of one step (indexing + prepare + augment), synchronised per step."""
    device = trainer.device
    order = torch.randperm(len(trainer.images), generator=trainer.order_gen).to(device)
    total = 0.0
    for lo, hi in windows:
        sync(device)
        start = time.perf_counter()
        ferkit_data(trainer, order[lo:hi])
        sync(device)
        total += time.perf_counter() - start
    return total / len(windows)


def run_conventional(args: argparse.Namespace, stem: str) -> dict[str, Any]:
    """Pipeline (b): DataLoader workers running per-image PIL transforms, fp32, contiguous memory."""
    cfg = base_config(args, stem)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    split = training_split(args)
    full_batches(len(split), args.batch, 1)  # stops with a clear message when there is not one full batch
    dataset = ConventionalDataset(split, cfg)
    model = create_model(cfg.model, attention=cfg.attention, stem=stem, in_chans=1,
                         num_classes=len(split.classes), reduction=cfg.reduction).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr * cfg.batch_size / 128, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed))
    first = [dataset[i] for i in range(args.batch)]
    x0 = torch.stack([x for x, _ in first]).to(device)
    y0 = torch.tensor([y for _, y in first], device=device)
    flops = count_flops(model, x0, y0, "fp32")
    setup_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = reset_peak_rss()
    model.train()
    batches = endless(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(batches)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step(*next_batch())
    sync(device)
    start = time.perf_counter()
    waited = 0.0
    for _ in range(args.steps):
        before = time.perf_counter()
        x, y = next_batch()
        waited += time.perf_counter() - before
        step(x, y)
    sync(device)
    elapsed = time.perf_counter() - start
    steps_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches.close()  # shuts the workers down and reaps them, so their peak is in RUSAGE_CHILDREN
    del batches, loader
    gc.collect()
    workers_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if args.workers else None
    return {"step_s": elapsed / args.steps, "data_s": waited / args.steps, "flops_per_step": flops,
            "threads": torch.get_num_threads(), "device": str(device),
            **memory(setup_kib, steps_kib, reset, workers_kib, device)}


def memory(setup_kib: int, steps_kib: int, reset: bool, workers_kib: int | None,
           device: torch.device) -> dict[str, Any]:
    """Peak resident memory overall and per phase (setup: data + model; steps: warmup + timed steps)."""
    out: dict[str, Any] = {"peak_rss_mib": mib(max(setup_kib, steps_kib)), "setup_peak_rss_mib": mib(setup_kib),
                           "steps_peak_rss_mib": mib(steps_kib) if reset else None}
    if workers_kib is not None:
        out["largest_loader_worker_peak_rss_mib"] = mib(workers_kib)  # pages shared with the parent count too
    if device.type == "cuda":
        out["peak_device_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def profile(run: Callable[[], Any], device: torch.device) -> None:
    """Print the operators that took the most time over ``run()`` (stderr)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=20), file=sys.stderr)


def run_matmul(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """The matrix-multiply peak of ``dtype`` on this machine, with the benchmark's thread count."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return {**matmul_peak(device, DTYPES[dtype], args.matmul_size), "threads": torch.get_num_threads(),
            "device": str(device)}


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration (``matmul:DTYPE``, ``ferkit:STEM`` or ``conventional:STEM``) in this process."""
    kind, name = args.phase.split(":")
    runners = {"matmul": run_matmul, "ferkit": run_ferkit, "conventional": run_conventional, "compile": run_compile}
    return runners[kind](args, name)


# -- orchestration -----------------------------------------------------------------------------------
def spawn(phase: str) -> dict[str, Any]:
    """Run ``phase`` in a fresh Python process with this command's options; its last stdout line is the result."""
    command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--phase", phase]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed (exit {done.returncode}); its error is above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def settings(args: argparse.Namespace, pipeline: str, stem: str, threads: int, device: str) -> dict[str, Any]:
    """What a figure was measured with, printed beside it."""
    cfg = TrainConfig()
    common = {"model": "resnet18", "attention": "cbam", "input": "1x48x48", "batch": args.batch,
              "steps": args.steps, "warmup": args.warmup, "threads": threads, "device": device,
              "data": args.data or f"synthetic {args.images} images",
              "augment": {"pad": cfg.pad, "flip": cfg.flip, "degrees": cfg.degrees}, "optimizer": "sgd momentum 0.9"}
    if pipeline == "ferkit":
        precision, channels_last = ferkit_precision(args, stem)
        return {**common, "precision": precision, "channels_last": channels_last, "compile": False}
    return {**common, "precision": "fp32", "channels_last": False, "compile": False, "workers": args.workers}


def step_line(args: argparse.Namespace, pipeline: str, stem: str, result: dict[str, Any],
              peak: dict[str, Any], peak_dtype: str) -> dict[str, Any]:
    """The JSON line of one pipeline's training step."""
    achieved = result["flops_per_step"] / result["step_s"] / 1e12
    line = {"benchmark": "train_throughput", "figure": "step", "pipeline": pipeline, "stem": stem,
            "img_per_s": round(args.batch / result["step_s"], 1), "step_ms": round(result["step_s"] * 1e3, 2),
            "data_ms": round(result["data_s"] * 1e3, 2), "data_share": round(result["data_s"] / result["step_s"], 4),
            "gflop_per_step": round(result["flops_per_step"] / 1e9, 2), "achieved_tflop_s": round(achieved, 4),
            "matmul_peak_dtype": peak_dtype, "matmul_peak_tflop_s": round(peak["peak_tflop_s"], 4),
            "pct_of_matmul_peak": round(100 * achieved / peak["peak_tflop_s"], 2)}
    line.update({k: v for k, v in result.items() if k.endswith("_mib")})
    line["settings"] = settings(args, pipeline, stem, result["threads"], result["device"])
    return line


def provenance() -> dict[str, Any]:
    """Where and when the figures were measured."""
    root = Path(__file__).resolve().parent.parent
    try:
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "git_commit": git_commit(),
            "git_dirty": dirty, "hardware": hardware(), "cpu": cpu_name(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; those left unset take the --quick or the full-run default."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stems", default="cifar,imagenet", help="comma-separated stems (cifar, s2, imagenet)")
    p.add_argument("--batch", type=int, help=f"images per step (default {FULL['batch']})")
    p.add_argument("--steps", type=int, help=f"timed steps (default {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps first (default {FULL['warmup']})")
    p.add_argument("--images", type=int, help=f"synthetic training images (default {FULL['images']})")
    p.add_argument("--data", help="time on the train split of this data set instead of synthetic images")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = library default")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", *DTYPES), default="auto",
                   help="autocast precision of ferkit's step; auto: fp32 for the imagenet stem on the CPU, else bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format in ferkit's step (default: on unless the step runs in fp32 on the CPU)")
    p.add_argument("--compile", action="store_true",
                   help="also time ferkit's step with its model under torch.compile, beside the eager one")
    p.add_argument("--matmul-size", type=int, help="side of the square matrices of the peak (default 2048; 8192 "
                                                    "on CUDA)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="print a torch.profiler table of this many more ferkit steps (stderr)")
    p.add_argument("--quick", action="store_true", help="a few-second smoke run: " + ", ".join(
        f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--out", help="also write every line, with provenance, to this JSON file")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {**FULL, "matmul_size": 8192 if resolve_device(args.device).type == "cuda" else 2048}
    for key, value in ({**defaults, **QUICK} if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--steps and --batch must be at least 1 and --warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return
    lines: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        lines.append(line)
        print(json.dumps(line), flush=True)

    stems = args.stems.split(",")
    peaks = {}
    for dtype in dict.fromkeys([*(ferkit_precision(args, stem)[0] for stem in stems), "fp32"]):
        peaks[dtype] = spawn(f"matmul:{dtype}")
        emit({"benchmark": "train_throughput", "figure": "matmul_peak", "dtype": dtype,
              "tflop_s": round(peaks[dtype]["peak_tflop_s"], 4), "matmul_size": args.matmul_size,
              "settings": {"threads": peaks[dtype]["threads"], "device": peaks[dtype]["device"]}})
    for stem in stems:
        dtype = ferkit_precision(args, stem)[0]
        ferkit = step_line(args, "ferkit", stem, spawn(f"ferkit:{stem}"), peaks[dtype], dtype)
        emit(ferkit)
        if args.compile:
            result = spawn(f"compile:{stem}")
            step_s = result["step_s"]
            emit({"benchmark": "train_throughput", "figure": "compile_speedup", "stem": stem,
                  "eager_img_per_s": round(args.batch / step_s["eager"], 1),
                  "compiled_img_per_s": round(args.batch / step_s["compiled"], 1),
                  "ratio": round(step_s["eager"] / step_s["compiled"], 3),
                  "rounds_ms": {k: [round(t * 1e3, 1) for t in v] for k, v in result["rounds_s"].items()},
                  "steps_per_round": result["steps_per_round"],
                  "warmup_s": {k: round(v, 1) for k, v in result["warmup_s"].items()},
                  "settings": {**ferkit["settings"], "compile": "both"}})
        conventional = step_line(args, "conventional", stem, spawn(f"conventional:{stem}"), peaks["fp32"], "fp32")
        emit(conventional)
        emit({"benchmark": "train_throughput", "figure": "speedup", "stem": stem,
              "ferkit_img_per_s": ferkit["img_per_s"], "conventional_img_per_s": conventional["img_per_s"],
              "ratio": round(ferkit["img_per_s"] / conventional["img_per_s"], 3),
              "settings": {"ferkit": ferkit["settings"], "conventional": conventional["settings"]}})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"provenance": provenance(), "lines": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
