"""The training loop: data held on the device, batched augmentation, SGD with warmup and a schedule,
validation every epoch, atomic best/last checkpoints and exact resume."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ferkit.config import TrainConfig, config_to_dict, load_config, split_override
from ferkit.data import FERDataset, load_dataset
from ferkit.data.augment import Augment, mix_batch, prepare
from ferkit.engine import modelfile
from ferkit.engine.modelfile import ModelMeta, build_model, load_checkpoint, save_checkpoint
from ferkit.engine.distributed import (all_reduce_sum, average_gradients, barrier, batch_bounds, init_world,
                                      shard)
from ferkit.engine.curves import plot_curves
from ferkit.engine.distill import CACHE_NAME as TEACHER_CACHE
from ferkit.engine.distill import check_teachers, mixed_targets, teacher_paths, teacher_probabilities
from ferkit.engine.evaluate import evaluate, write_report
from ferkit.engine.runs import training_record
from ferkit.engine.runtime import autocast, git_commit, hardware, resolve_device, usable_precision
from ferkit.errors import FerkitError
from ferkit.fileio import append_line, can_draw, check_writable, remove_stale_temps, write_json, write_text
from ferkit.losses import create_loss
from ferkit.losses.objective import balanced_weights


@dataclass
class RunResult:
    """What a finished (or budget-stopped) run achieved."""

    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_val_acc: float
    test_acc: float | None
    wall_s: float


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig, epochs: int | None = None) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``: linear warmup, then the schedule, which
    ends after ``epochs`` (default ``cfg.epochs``; fewer where ``fit_time`` cut the run)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    total = max((epochs or cfg.epochs) * steps_per_epoch, 1)
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    passed = sum(step >= m * total for m in cfg.milestones)
    return cfg.gamma**passed


def epochs_that_fit(limit_s: float, wall_s: float, epoch: int, epochs_s: float, planned: int,
                    last_s: float = 0.0) -> int:
    """The epochs a run with a limit of ``limit_s`` seconds can hold: those done (``epoch``, which took
    ``epochs_s`` seconds of its ``wall_s``, the last one ``last_s``), and as many more as fit in what is left at
    their mean pace or the last one's, whichever is slower (the run stops before an epoch that would end past the
    limit as the last one's length judges it); never more than ``planned``, never fewer than those done."""
    if epoch == 0:
        return planned
    more = math.floor((limit_s - wall_s) / max(epochs_s / epoch, last_s) + 1e-9)
    return max(epoch, min(planned, epoch + more))


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool) -> list[dict[str, Any]]:
    """SGD groups of ``model``: weight decay on conv and linear weights, and on 1-d tensors (BatchNorm
    weights, biases) only with ``decay_norm_bias``; an empty group is left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0})
            if g["params"]]


def freeze_parts(model: nn.Module, count: int) -> list[nn.Module]:
    """Fix the first ``count`` parts of ``model``'s backbone (the stem, then its stages in order): their
    weights stop training. Returns those parts, whose BatchNorm statistics the trainer also keeps fixed
    by holding them in eval mode."""
    if count == 0:
        return []
    parts = [model.stem, *model.stages] if hasattr(model, "stem") and hasattr(model, "stages") else []
    if count > len(parts):
        raise FerkitError(f"freeze={count}: this model's backbone has {len(parts)} parts to freeze "
                          "(the stem and each stage)")
    for part in parts[:count]:
        part.requires_grad_(False)
    return parts[:count]


def init_weights(model: nn.Module, meta: ModelMeta, path: str | Path) -> str:
    """Load the weights of checkpoint (.pt), ferkit model (.safetensors) or shipped model name (``default``)
    ``path`` into ``model`` to fine-tune it.

    The architecture in ``path`` must be the one ``meta`` describes. When the classes differ (names,
    order or count), the classifier head keeps its fresh initialisation and everything else is
    loaded. Returns a line saying what was loaded.
    """
    path = modelfile.model_path(path)
    source, weights = modelfile.read(path)
    if source.members > 1:
        raise FerkitError(f"{path}: is an ensemble of {source.members} models; fine-tune from one of its members")
    mine, theirs = meta.architecture(), source.architecture()
    differ = [f"{key} {theirs[key]!r} (config: {mine[key]!r})" for key in mine if theirs[key] != mine[key]]
    if differ:
        raise FerkitError(f"{path}: the init model differs from the config's: {', '.join(differ)}; "
                          "set these keys to match it, or use another init file")
    classes, source_classes = list(meta.classes), list(source.classes)
    # The classifier is the model's last linear layer (ResNet's fc, the layer forward_head applies).
    head = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1] + "."
    if source_classes != classes:
        weights = {key: value for key, value in weights.items() if not key.startswith(head)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise FerkitError(f"{path}: weights do not fit the model ({str(e).strip().splitlines()[-1].strip()})") from None
    # ferkit model files leave out BatchNorm's batch counters, which only count steps.
    missing = [key for key in missing if not key.startswith(head) and not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise FerkitError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    line = f"init: loaded {len(weights)} tensors from {path}"
    if source_classes == classes:
        line += ", classifier head included"
    else:
        line += (f", all but the classifier head, which is new for {len(classes)} classes ({', '.join(classes)}) "
                 f"in place of its {len(source_classes)} ({', '.join(source_classes)})")
    changed = [f"{key} {getattr(source, key)} -> {getattr(meta, key)}" for key in meta.INPUT
               if getattr(source, key) != getattr(meta, key)]
    return line + (f"; note the input differs from its training: {', '.join(changed)}" if changed else "")


def soft_targets(data: FERDataset, mix: float) -> torch.Tensor:
    """The training target of each image: ``mix`` of its soft label plus ``1 - mix`` of its one-hot hard label."""
    assert data.soft_labels is not None
    hard = torch.nn.functional.one_hot(data.labels, len(data.classes)).float()
    return mix * data.soft_labels + (1 - mix) * hard


class Trainer:
    """One training run in ``run_dir``; :meth:`fit` trains, checkpoints and scores it."""

    def __init__(self, cfg: TrainConfig, splits: dict[str, FERDataset], run_dir: str | Path,
                 log: Callable[[str], None] = print, progress: bool = True, resume: bool = False):
        if "train" not in splits or "val" not in splits:
            raise FerkitError("training needs a 'train' and a 'val' split")
        if cfg.soft_labels and splits["train"].soft_labels is None:
            raise FerkitError(f"soft_labels=true: {splits['train'].source} has no soft labels "
                              "(FER+ has annotator votes)")
        self.cfg, self.splits = cfg, splits
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.device)
        self.world = init_world(self.device)
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        self.log = log if self.world.is_main else (lambda message: None)
        self.precision, why = usable_precision(self.device, cfg.precision)
        if why:
            self.log(why)
        self.progress = progress and self.world.is_main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        train = splits["train"]
        # class_counts: the prior, for logit adjustment at export
        self.meta = ModelMeta.from_config(cfg, train.classes, tta=cfg.tta,
                                          class_counts=list(train.class_counts().values()))
        self.model = build_model(self.meta).to(self.device)
        # The record of the run the weights came from, kept now: a shipped name (init=default) may name another
        # file by the time this run is exported, and a run folder (init=runs/x/best.pt) may be gone.
        self.init_training: dict[str, Any] | None = None
        if cfg.init:
            self.log(init_weights(self.model, self.meta, cfg.init))
            self.init_training = training_record(modelfile.model_path(cfg.init)) or None
        # The same for each teacher, whose probabilities make part of the target (a run folder may be gone too);
        # a resumed run has them in its checkpoint, and its teachers' files need not be there any more.
        self.teacher_training: list[dict[str, Any]] = [] if resume else [
            {"teacher": str(source), **training_record(path)}
            for path, source in zip(teacher_paths(cfg.teacher), cfg.teacher)]
        self.frozen = freeze_parts(self.model, cfg.freeze)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward: torch.nn.Module = self.model
        if self.world.size > 1:
            if cfg.sync_bn and self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            elif cfg.sync_bn:
                self.log("sync_bn: PyTorch syncs BatchNorm on GPUs only; each CPU process keeps its own statistics")
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eager_forward = self.forward  # what compile=true falls back to where torch.compile fails
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        weights = balanced_weights(torch.tensor(list(train.class_counts().values()))) if cfg.class_balance else None
        self.criterion = create_loss(cfg.loss, len(train.classes), self.model.num_features, cfg.lam,
                                     cfg.lambda1, cfg.label_smoothing, cfg.aux_normalize, weights).to(self.device)
        groups = parameter_groups(self.model, cfg.weight_decay, cfg.decay_norm_bias)
        if self.criterion.aux is not None:
            groups.append({"params": list(self.criterion.aux.parameters()), "lr": cfg.center_lr,
                           "weight_decay": 0.0, "momentum": 0.0, "nesterov": False})
        lr = cfg.lr * cfg.batch_size / 128
        # The fused kernel updates all parameters in one pass: ~2.7x faster than the per-tensor loop on CPU.
        self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                         weight_decay=cfg.weight_decay, fused=True)
        # batch_size is the global batch: the same config trains the same way on any number of processes.
        self.bounds = batch_bounds(len(train), cfg.batch_size)
        self.steps_per_epoch = len(self.bounds)
        # The schedule ends with the run's planned epochs, which fit_time may cut below cfg.epochs.
        self.epochs_planned = cfg.epochs
        self.epochs_s = 0.0  # seconds spent in epochs (the pace fit_time plans by)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lambda s: lr_factor(s, self.steps_per_epoch, cfg, self.epochs_planned)] * len(groups))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.augment = Augment(cfg.pad, cfg.flip, cfg.degrees, tuple(cfg.scale), cfg.translate, cfg.erase,
                               cfg.photometric, cfg.noise, cfg.blur, cfg.aspect, cfg.perspective, cfg.lowres,
                               exposure=cfg.exposure, mean=cfg.mean, std=cfg.std)
        # Epoch order and augmentation draw from their own generators, whose states go into
        # every checkpoint: a resumed run continues exactly as an unbroken one would.
        self.order_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        # The data lives on the device for the whole run: uint8, converted per batch.
        self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.device)
        # The loss's targets: the vote distributions when asked for, else the class indices.
        self.targets = soft_targets(train, cfg.soft_mix).to(self.device) if cfg.soft_labels else self.labels
        # Reading the training set with the teachers is part of the run's time (and of its time limit); a resumed
        # run reads them from the run folder and takes its time from the checkpoint instead.
        t0 = time.perf_counter()
        if cfg.teacher:
            self.targets = mixed_targets(self.targets, self._teacher(train, reuse=resume), cfg.teacher_mix)
        if (cfg.mixup or cfg.cutmix) and self.targets.ndim == 1:  # mixed targets are distributions
            self.targets = nn.functional.one_hot(self.targets, len(train.classes)).float()
        self.epoch = 0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.wall_s = time.perf_counter() - t0 if cfg.teacher else 0.0
        self.writer = self._tensorboard() if self.world.is_main else None

    def _teacher(self, train: FERDataset, reuse: bool = False) -> torch.Tensor:
        """The teachers' probabilities of the training images: read by rank 0 and kept in the run folder, where
        the other ranks of a torchrun then find them (and a resumed run, ``reuse``, whatever its teachers are now)."""
        def read() -> torch.Tensor:
            return teacher_probabilities(
                self.cfg.teacher, train.images, train.classes, temperature=self.cfg.teacher_temperature,
                tta="flip", device=self.device, precision=self.precision, batch_size=self.cfg.eval_batch_size,
                cache=self.run_dir / TEACHER_CACHE, reuse=reuse, progress=self.progress, log=self.log)

        probs = read() if self.world.is_main else None
        barrier(self.world)
        return probs if probs is not None else read()

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume: weights, centers, optimizer, schedule, RNG states, progress."""
        return {
            "meta": self.meta.to_dict(),
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "order_gen": self.order_gen.get_state(),
            "aug_gen": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "wall_s": self.wall_s,
            "epochs_planned": self.epochs_planned,
            "epochs_s": self.epochs_s,
            "init_training": self.init_training,
            "teacher_training": self.teacher_training,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` dict."""
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.order_gen.set_state(state["order_gen"])
        self.aug_gen.set_state(state["aug_gen"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.best_val_acc = state["best_val_acc"]
        self.best_epoch = state["best_epoch"]
        self.wall_s = state["wall_s"]
        # Only fit_time plans fewer epochs than the config's; a run without it (or from before it) keeps the
        # config's, so a run resumed with more epochs trains them.
        self.epochs_planned = state.get("epochs_planned", self.cfg.epochs) if self.cfg.fit_time else self.cfg.epochs
        self.epochs_s = state.get("epochs_s", 0.0)
        self.init_training = state.get("init_training", self.init_training)  # checkpoints before it had none
        self.teacher_training = state.get("teacher_training", self.teacher_training)

    # -- loop ------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split in random order; returns mean losses, accuracy and img/s."""
        cfg = self.cfg
        self.model.train()
        for part in self.frozen:  # fixed parts keep their BatchNorm statistics too
            part.eval()
        order = torch.randperm(len(self.images), generator=self.order_gen).to(self.device)
        sums = torch.zeros(5, device=self.device)  # loss, softmax, aux, correct, images (this rank)
        start = time.perf_counter()
        bar = tqdm(self.bounds, desc=f"epoch {self.epoch + 1}/{self.epochs_planned}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        for step, (lo, hi) in enumerate(bar):
            idx = shard(order[lo:hi], self.world)
            y = self.labels[idx]
            x = prepare(self.images[idx], self.meta.in_chans, cfg.input_size, cfg.mean, cfg.std)
            x = self.augment(x, self.aug_gen)
            targets = self.targets[idx]
            if cfg.mixup or cfg.cutmix:
                x, targets = mix_batch(x, targets, cfg.mixup, cfg.cutmix, cfg.mix_prob, self.aug_gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                logits, parts = self.gradients(x, targets)
            except torch._dynamo.exc.TorchDynamoException as error:
                if self.forward is self.eager_forward:
                    raise
                reason = (str(error).strip() or type(error).__name__).splitlines()[0]
                self.log(f"compile: torch.compile failed ({reason}); training on without it")
                self.forward = self.eager_forward
                logits, parts = self.gradients(x, targets)
            average_gradients(list(self.criterion.parameters()), self.world)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            with torch.no_grad():
                correct = (logits.argmax(1) == y).sum()
                sums += torch.stack([parts.total.detach(), parts.softmax, parts.aux, correct.float(),
                                     torch.tensor(float(len(y)), device=self.device)])
            if self.progress and (step % 10 == 9 or step == self.steps_per_epoch - 1):
                s = sums.tolist()
                # With an auxiliary term the total is softmax + lam x aux, far above the softmax term on raw
                # features: both parts are shown, so a loss of 190 beside 1.97 says where it comes from.
                parts_shown = ({"ce": f"{s[1] / (step + 1):.3f}", "aux": f"{s[2] / (step + 1):.3g}"}
                               if cfg.loss != "softmax" else {})
                bar.set_postfix(loss=f"{s[0] / (step + 1):.3f}", **parts_shown, acc=f"{s[3] / s[4]:.3f}",
                                img_s=f"{s[4] * self.world.size / (time.perf_counter() - start):.0f}")
        elapsed = time.perf_counter() - start
        s = (all_reduce_sum(sums, self.world) / self.world.size).tolist()
        steps = self.steps_per_epoch
        return {"loss": s[0] / steps, "softmax": s[1] / steps, "aux": s[2] / steps, "train_acc": s[3] / s[4],
                "img_per_s": s[4] * self.world.size / elapsed, "epoch_s": elapsed}

    def gradients(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One batch's forward pass and backward pass: its logits and loss parts, the gradients left in place."""
        with autocast(self.device, self.precision):
            features, logits = self.forward(x, return_features=True)
        parts = self.criterion(features.float(), logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts.total).backward()
        return logits, parts

    def score(self, split: str) -> tuple[Any, float]:
        """Report and NLL of the current model on ``split``."""
        cfg = self.cfg
        return evaluate(self.model, self.splits[split], self.meta, cfg.tta, cfg.eval_batch_size,
                        self.precision, cfg.channels_last)

    def fit(self, stop_after: int | None = None) -> RunResult:
        """Train until ``cfg.epochs`` (or the time limit, or ``stop_after`` epochs in this call)."""
        cfg = self.cfg
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.tidy_run_dir()
            write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), self.run_dir / "config.yaml")
        done_here, last_epoch_s = 0, 0.0
        while self.epoch < self.epochs_planned:
            if stop_after is not None and done_here >= stop_after:
                break
            # Stop before an epoch that would end past the limit, judged by the last epoch's length.
            if cfg.time_limit_min and self.wall_s + last_epoch_s > cfg.time_limit_min * 60:
                if self.epoch == 0:
                    raise FerkitError(f"time limit of {cfg.time_limit_min:g} min reached before the first epoch "
                                      f"(reading the training set with the teachers took {self.wall_s / 60:.1f} "
                                      "min); raise time_limit_min (their probabilities are kept in the run folder)")
                self.log(f"time limit of {cfg.time_limit_min} min reached after {self.epoch} epochs")
                break
            t0 = time.perf_counter()
            stats = self.train_epoch()
            if not math.isfinite(stats["loss"]) or not self.weights_finite():
                raise FerkitError(f"epoch {self.epoch + 1}: training diverged (loss {stats['loss']:.4g}), so nothing "
                                  f"of this epoch was saved; lower the learning rate (lr={cfg.lr:g}) and start "
                                  "a new run")
            report, val_nll = self.score("val")
            self.epoch += 1
            done_here += 1
            last_epoch_s = time.perf_counter() - t0
            self.wall_s += last_epoch_s
            self.epochs_s += last_epoch_s
            if cfg.fit_time and cfg.time_limit_min:
                self.fit_to_time(last_epoch_s)
            record = {"epoch": self.epoch, **stats, "val_acc": report.accuracy,
                      "val_mean_class_acc": report.mean_class_accuracy, "val_macro_f1": report.macro_f1,
                      "val_nll": val_nll,
                      "lr": self.optimizer.param_groups[0]["lr"], "wall_s": self.wall_s}
            improved = report.accuracy > self.best_val_acc
            if improved:
                self.best_val_acc, self.best_epoch = report.accuracy, self.epoch
            if self.world.is_main:
                self.write_epoch(record, improved, report.accuracy)
            parts = (f" (softmax {stats['softmax']:.4f} + {cfg.lam:g} x {cfg.loss} {stats['aux']:.4g})"
                     if cfg.loss != "softmax" else "")
            self.log(f"epoch {self.epoch}/{self.epochs_planned}  loss {stats['loss']:.4f}{parts}  train {stats['train_acc']:.2%}  "
                     f"val {report.accuracy:.2%}  (best {self.best_val_acc:.2%} @ {self.best_epoch})  "
                     f"{stats['img_per_s']:.0f} img/s  {stats['epoch_s']:.0f}s")
        return self.finish()

    def fit_to_time(self, last_s: float = 0.0) -> None:
        """Plan the epochs that fit ``time_limit_min`` at the pace so far, at most the config's (the schedule, which
        ends with them, anneals in time); say so when they change. The plan may grow again: planned only ever
        down, a slow first epoch (a busy machine, caches warming) cut a 60-minute run to 11 epochs of 324 s where
        its later epochs took 217-263 s, and it would have ended after ~45 minutes. ``last_s``, the epoch just done:
        planned at the mean pace alone, a run promised a 14th epoch that the time limit, judging by a slower 13th,
        then refused, its schedule unfinished. Called after each epoch, before it is checkpointed, so a resumed run
        plans as an unbroken one."""
        fits = epochs_that_fit(self.cfg.time_limit_min * 60, self.wall_s, self.epoch, self.epochs_s, self.cfg.epochs,
                               last_s)
        if fits != self.epochs_planned:
            mean_s = self.epochs_s / self.epoch
            pace = (f"{last_s:.0f} s an epoch (the last one; {mean_s:.0f} s on average)" if last_s > mean_s
                    else f"{mean_s:.0f} s an epoch")
            self.log(f"fit_time: {fits} of {self.cfg.epochs} epochs fit in {self.cfg.time_limit_min:g} min at "
                     f"{pace}; the schedule now ends after epoch {fits}")
            self.epochs_planned = fits

    def weights_finite(self) -> bool:
        """Whether every weight, buffer and class center is finite (a diverged run's are not)."""
        tensors = [*self.model.state_dict().values(), *self.criterion.state_dict().values()]
        return all(bool(t.isfinite().all()) for t in tensors if t.is_floating_point())

    def tidy_run_dir(self) -> None:
        """Remove what an interrupted run left in the run folder: temp files of killed writes, and the
        metrics lines of epochs after the one this run starts from, which it trains again."""
        for path in remove_stale_temps(self.run_dir):
            self.log(f"removed {path.name}, left by an interrupted write")
        metrics = self.run_dir / "metrics.jsonl"
        if not metrics.is_file():
            return
        lines = metrics.read_text().splitlines()
        kept = [line for line in lines if 0 < _epoch_of(line) <= self.epoch]
        if kept != lines:
            write_text("".join(line + "\n" for line in kept), metrics)

    def write_epoch(self, record: dict[str, float], improved: bool, val_acc: float) -> None:
        """Checkpoints (best when ``improved``, always last), the epoch's JSON line and TensorBoard scalars."""
        if improved:
            save_checkpoint(self.run_dir / "best.pt", {
                "meta": self.meta.to_dict(), "config": config_to_dict(self.cfg), "model": self.model.state_dict(),
                "criterion": self.criterion.state_dict(), "epoch": self.epoch, "val_acc": val_acc})
        # The line goes first: a crash before last.pt is renamed in leaves a line that the resume
        # from the previous last.pt drops (tidy_run_dir) and writes again, never an epoch without one.
        append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
        save_checkpoint(self.run_dir / "last.pt", self.state())
        if self.writer is not None:
            for key, value in record.items():
                self.writer.add_scalar(key, value, self.epoch)

    def finish(self) -> RunResult:
        """Score the best checkpoint on val and test and write ``final.json`` and the test report."""
        test_acc = None
        barrier(self.world)
        if (self.run_dir / "best.pt").is_file():
            self.model.load_state_dict(load_checkpoint(self.run_dir / "best.pt")["model"])
        summary: dict[str, Any] = {
            "config": config_to_dict(self.cfg), "meta": self.meta.to_dict(), "git_commit": git_commit(),
            "hardware": hardware(), "seed": self.cfg.seed, "epochs_done": self.epoch,
            "epochs_planned": self.epochs_planned, "best_epoch": self.best_epoch, "wall_s": round(self.wall_s, 1),
            **({"init_training": self.init_training} if self.init_training else {}),
            **({"teacher_training": self.teacher_training} if self.teacher_training else {}),
        }
        for split in ("val", "test"):
            if split not in self.splits:
                continue
            report, nll = self.score(split)
            summary[f"{split}_acc"] = report.accuracy
            summary[f"{split}_mean_class_acc"] = report.mean_class_accuracy
            summary[f"{split}_macro_f1"] = report.macro_f1
            summary[f"{split}_per_class_acc"] = report.per_class_accuracy
            summary[f"{split}_nll"] = nll
            if split == "test":
                test_acc = report.accuracy
            if split == "test" and self.world.is_main:
                write_report(report, self.run_dir / "test_report",
                             f"{self.splits[split].source} test, best epoch {self.best_epoch}",
                             {"checkpoint": str(self.run_dir / "best.pt"), "tta": self.cfg.tta})
        if self.world.is_main:
            write_json(summary, self.run_dir / "final.json")
            if can_draw():  # the curves beside the run they belong to
                plot_curves([self.run_dir], self.run_dir / "curves.png", f"{self.run_dir.name}: training curves")
        if self.writer is not None:
            self.writer.close()
        self.log(f"best epoch {self.best_epoch}: val {summary.get('val_acc', math.nan):.2%}"
                 + (f", test {test_acc:.2%}" if test_acc is not None else ""))
        return RunResult(self.run_dir, self.epoch, self.best_epoch, summary.get("val_acc", math.nan),
                         test_acc, self.wall_s)


def _epoch_of(line: str) -> int:
    """The epoch a metrics.jsonl line records; 0 for a line that is not a whole record (a cut-off write)."""
    try:
        epoch = json.loads(line).get("epoch")
    except (json.JSONDecodeError, AttributeError):
        return 0
    return epoch if isinstance(epoch, int) else 0


def load_training_data(cfg: TrainConfig, data: str | Path, log: Callable[[str], None] = print,
                       progress: bool = True) -> dict[str, FERDataset]:
    """Read the splits of ``data`` as ``cfg`` asks, logging how validation was made and what was skipped."""
    options = {key: getattr(cfg, key) for key, default in (("classes", 0), ("hard_labels", "ferplus"))
               if getattr(cfg, key) != default}
    splits = load_dataset(data, skip_bad=cfg.skip_bad, val_fraction=cfg.val_fraction, seed=cfg.seed,
                          progress=progress, **options)
    for name, split in splits.items():
        if split.note:
            log(f"{name}: {split.note}")
        if split.skipped:
            log(f"{name}: skipped {split.skipped} unreadable images")
    return splits


def train(cfg: TrainConfig, data: str | Path | dict[str, FERDataset], run_dir: str | Path,
          resume: bool = False, stop_after: int | None = None, log: Callable[[str], None] = print,
          progress: bool = True) -> RunResult:
    """Train ``cfg`` on ``data`` (a path or loaded splits) into ``run_dir``; ``resume`` continues from last.pt."""
    splits = data if isinstance(data, dict) else load_training_data(cfg, data, log, progress)
    trainer = Trainer(cfg, splits, run_dir, log, progress, resume=resume)
    if resume:
        trainer.load_state(load_checkpoint(Path(run_dir) / "last.pt"))
        log(f"resuming {run_dir} after epoch {trainer.epoch}")
    return trainer.fit(stop_after)


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with."""
    path = Path(run_dir) / "config.yaml"
    if not (Path(run_dir) / "last.pt").is_file():
        raise FerkitError(f"{run_dir}: nothing to resume (no last.pt)")
    return load_config(path)


FINETUNE_RECIPE = "finetune"
"""The shipped config a run starts from when it names an ``init`` model and no config: fine-tuning."""
INIT_KEYS = (*ModelMeta.ARCHITECTURE, *ModelMeta.INPUT)
"""What a fine-tuning run takes from its init model unless told otherwise: its shape and its input."""


def load_train_config(config: str | Path | None, overrides: list[str] | dict[str, Any] | None = None,
                      log: Callable[[str], None] = print) -> tuple[TrainConfig, str]:
    """The config a new run trains with, and its name for the run folder.

    With a ``config``, or without ``init=``, that config (or the defaults) with ``overrides``. A run that
    names an ``init`` model and no config fine-tunes: it starts from the :data:`FINETUNE_RECIPE` recipe,
    with the init model's architecture, input size and normalisation (:data:`INIT_KEYS`) unless the
    overrides set them.
    """
    cfg = load_config(config, overrides)
    if config is not None or not cfg.init:
        return cfg, Path(config).stem if config else "default"
    given = dict(overrides) if isinstance(overrides, dict) else dict(split_override(o) for o in overrides or [])
    source, _ = modelfile.read(modelfile.model_path(cfg.init))
    taken = {key: getattr(source, key) for key in INIT_KEYS if key not in given}
    log(f"init={cfg.init} and no --config: fine-tuning with the {FINETUNE_RECIPE!r} recipe"
        + (f" and the init model's {', '.join(f'{k}={v}' for k, v in taken.items())}" if taken else ""))
    return load_config(FINETUNE_RECIPE, {**taken, **given}), FINETUNE_RECIPE


def train_run(config: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
              data: str | Path | None = None, out: str | Path | None = None, resume: str | Path | None = None,
              command: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> tuple[Path, RunResult]:
    """Start a training run of ``config`` (a shipped name or YAML file) with ``overrides`` on ``data`` into ``out``
    (default ``runs/<config>-<time>``), or continue the run in folder ``resume`` with its saved config and data.

    Nothing is written until the data has been read, and a folder holding another run is refused.
    The run folder keeps the data path and ``command`` (how the run was started) beside its checkpoints.
    Returns the run folder and the run's result.
    """
    if resume is not None:
        run_dir = Path(resume)
        given = [name for name, value in (("config (--config)", config), ("out (--out)", out),
                                          ("overrides (key=value)", overrides)) if value]
        if given:
            raise FerkitError(f"resuming {run_dir} continues it with the config saved in that folder; "
                              f"leave out {' and '.join(given)}")
        cfg = resume_config(run_dir)
        saved = run_dir / "data_path.txt"
        if data is None and saved.is_file():
            data = saved.read_text().strip()
    else:
        cfg, name = load_train_config(config, overrides, log)
        run_dir = Path(out) if out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if run_dir.exists() and not run_dir.is_dir():
            raise FerkitError(f"{run_dir}: exists and is not a folder; choose another output folder (--out)")
        check_writable(run_dir)  # a file in the way, a read-only folder: said before the data is read
        if (run_dir / "last.pt").exists():
            raise FerkitError(f"{run_dir}: already holds a run; resume it or choose another output folder")
        left = [file for file in ("best.pt", "metrics.jsonl", "final.json") if (run_dir / file).exists()]
        if left:
            raise FerkitError(f"{run_dir}: holds {', '.join(left)} of an earlier run but no last.pt to resume "
                              "from; choose another output folder, or delete that folder to start again")
    if data is None or not str(data).strip():
        raise FerkitError("no data given: pass the path of the data set")
    # Read the data before writing anything, so bad data leaves no half-made run folder.
    splits = load_training_data(cfg, data, log, progress)
    if cfg.teacher and not (resume is not None and (run_dir / TEACHER_CACHE).is_file()):
        check_teachers(cfg.teacher, splits["train"].classes)  # a resumed run reads its own teachers' cache
    if resume is None:
        write_text(str(Path(data).resolve()) + "\n", run_dir / "data_path.txt")
        if command:
            write_text(command + "\n", run_dir / "command.txt")
    log(f"run folder: {run_dir}")
    return run_dir, train(cfg, splits, run_dir, resume=resume is not None, log=log, progress=progress)

