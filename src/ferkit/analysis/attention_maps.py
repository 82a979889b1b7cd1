"""Where a model looks: its CBAM spatial attention maps, Grad-CAM, and a picture of both on detected faces."""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferkit.data.augment import prepare
from ferkit.detect import load_image
from ferkit.engine.inference import probabilities
from ferkit.fileio import new_figure, save_figure
from ferkit.engine import modelfile
from ferkit.engine.predict import Box, Recognizer
from ferkit.errors import FerkitError
from ferkit.models import CBAM, SpatialGate

BLOCK_CHOICES = ("last", "all")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (BN running statistics, no dropout) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def spatial_gates(model: nn.Module, blocks: str = "last") -> dict[str, SpatialGate]:
    """The CBAM spatial gates of a ferkit ResNet by name: ``stage1``..``stage4`` (``blocks="last"``,
    the last block of each stage) or ``stage1.0``, ``stage1.1``, ... (``"all"``). Empty without CBAM."""
    if blocks not in BLOCK_CHOICES:
        raise ValueError(f"unknown blocks {blocks!r}; valid: {', '.join(BLOCK_CHOICES)}")
    gates: dict[str, SpatialGate] = {}
    for i, stage in enumerate(getattr(model, "stages", ()), start=1):
        chosen = list(enumerate(stage))
        for j, block in chosen[-1:] if blocks == "last" else chosen:
            attn = getattr(block, "attn", None)
            if isinstance(attn, CBAM) and attn.spatial is not None:
                gates[f"stage{i}" if blocks == "last" else f"stage{i}.{j}"] = attn.spatial
    return gates


@torch.no_grad()
def cbam_spatial_maps(model: nn.Module, x: torch.Tensor, blocks: str = "last") -> dict[str, torch.Tensor]:
    """Each chosen block's CBAM spatial map Ms for the normalised batch ``x``, N x 1 x H x W at the input's size.

    By default one map per stage, from its last block: the gate applied just before the stage hands
    its output on. ``blocks="all"`` gives every block's map. Values are the gate itself, in [0, 1],
    upsampled bilinearly (which keeps them in range); a model without CBAM gives an empty dict.
    """
    gates = spatial_gates(model, blocks)
    if not gates:
        return {}
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: SpatialGate, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured[name] = module.gate(inputs[0])
        return hook

    handles = [gate.register_forward_hook(keep(name)) for name, gate in gates.items()]
    try:
        with _eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    size = tuple(x.shape[-2:])
    return {name: F.interpolate(captured[name].float(), size=size, mode="bilinear", align_corners=False).clamp(0, 1)
            for name in gates}


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) on the last stage's map: N x 1 x H x W at the input's size, in [0, 1].

    ``target`` is the class to explain: one index for all images, one per image (N), or None for
    each image's predicted class. Each map is scaled to span [0, 1]; a map with no positive
    evidence is all zeros. Works for any ferkit ResNet (with or without attention).
    """
    if not (hasattr(model, "forward_maps") and hasattr(model, "forward_head")):
        raise FerkitError(f"{type(model).__name__} has no forward_maps/forward_head; Grad-CAM needs a ferkit ResNet")
    with _eval_mode(model):
        with torch.no_grad():
            maps = model.forward_maps(x).float()
        # The class score depends on the last map only through the head, so the gradient is taken
        # there: the trunk needs no backward pass and no parameter's .grad is touched.
        maps.requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_head(maps.mean(dim=(2, 3)))
            if target is None:
                chosen = logits.argmax(dim=1)
            else:
                chosen = torch.as_tensor(target, device=logits.device).long().expand(len(logits))
            score = logits.gather(1, chosen.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, maps)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    low = cam.amin(dim=(2, 3), keepdim=True)
    span = cam.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (cam - low) / span.clamp(min=1e-12), torch.zeros_like(cam))


def _face_crop(recognizer: Recognizer, path: str | os.PathLike[str]) -> tuple[np.ndarray, Box | None, str]:
    """The model-sized crop of the largest face in an image file as ``recognizer`` cuts it, its box and a note;
    without a face, the whole image taken as a face crop."""
    image = load_image(path)
    found = recognizer.crop_faces(image) if recognizer.detect else []
    if found:
        face, crop = found[0]
        return crop, face.box, ""
    (_, crop), = recognizer.crop_faces(image, detect=False)
    return crop, None, "no face found, whole image" if recognizer.detect else ""


def attention_picture(checkpoint: str | os.PathLike[str], image_paths: Sequence[str | os.PathLike[str]],
                      out_path: str | os.PathLike[str], stages: Sequence[int] = (1, 2, 3, 4), detect: bool = True,
                      detector: str | None = None, min_face: int | None = None,
                      device: str = "cpu") -> list[dict[str, Any]]:
    """One row per image: the face crop, the CBAM spatial map of each chosen stage, and Grad-CAM, as one PNG.

    Faces are detected and cropped by a :class:`~ferkit.engine.predict.Recognizer` with its defaults unless
    ``detector``/``min_face`` are given (largest face, the model's crop margin, eyes levelled); without a
    face, or with ``detect=False``, the whole image is used. Each row is titled with the predicted class (one view, no TTA). CBAM maps are
    shown stretched to their own range, printed in the panel title; models without CBAM get the
    face and Grad-CAM only, and the picture says so. Returns one summary dict per image.
    """
    if not image_paths:
        raise FerkitError("attention_picture needs at least one image")
    model, meta = modelfile.load(checkpoint, device)
    available = len(getattr(model, "stages", ()))
    bad = [s for s in stages if not 1 <= s <= available]
    if bad or not stages:
        raise FerkitError(f"stages must be chosen from 1..{available}, got {list(stages)}")
    chosen = {key: value for key, value in (("detector", detector), ("min_face", min_face)) if value is not None}
    recognizer = Recognizer(model, meta, backend="torch", detect=detect, device=device, **chosen)
    crops, boxes, notes = zip(*(_face_crop(recognizer, p) for p in image_paths))
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    x = prepare(batch.to(device), meta.in_chans, meta.input_size, meta.mean, meta.std)
    with _eval_mode(model), torch.no_grad():
        probs = probabilities(model(x).float(), meta).cpu()
    predicted = probs.argmax(dim=1)
    spatial = cbam_spatial_maps(model, x)
    stage_maps = {f"stage {s}": spatial[f"stage{s}"].cpu() for s in stages if f"stage{s}" in spatial}
    cams = grad_cam(model, x, predicted.to(x.device)).cpu()

    columns = 2 + len(stage_maps)
    fig = new_figure(figsize=(2.3 * columns, 2.6 * len(crops) + 0.5), layout="constrained")
    axes = fig.subplots(len(crops), columns, squeeze=False)
    summaries = []
    for row, (path, crop, box, note) in enumerate(zip(image_paths, crops, boxes, notes)):
        label = meta.classes[int(predicted[row])]
        confidence = float(probs[row, predicted[row]])
        grey = crop.mean(axis=2)
        face_ax = axes[row][0]
        face_ax.imshow(crop if crop.shape[2] == 3 else grey, cmap="gray", vmin=0, vmax=255)
        face_ax.set_title(f"{Path(path).name}\n{label} {confidence:.0%}" + (f"\n({note})" if note else ""),
                          fontsize=8)
        panels = [(name, m[row, 0].numpy(), True) for name, m in stage_maps.items()]
        panels.append(("Grad-CAM", cams[row, 0].numpy(), False))
        for ax, (name, heat, stretch) in zip(axes[row][1:], panels):
            low, high = (float(heat.min()), float(heat.max())) if stretch else (0.0, 1.0)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=low, vmax=high if high > low else low + 1e-6)
            ax.set_title(f"{name} ({low:.2f}-{high:.2f})" if stretch else f"{name} ({label})", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        summaries.append({"source": str(path), "box": list(box) if box else None, "note": note, "label": label,
                          "confidence": confidence, "panels": ["face", *stage_maps, "Grad-CAM"]})
    heading = f"{Path(checkpoint).name}: {meta.attention} attention"
    if not stage_maps:
        heading += " - no CBAM spatial attention in this model, Grad-CAM only"
    fig.suptitle(heading, fontsize=9)
    save_figure(fig, out_path)
    return summaries
