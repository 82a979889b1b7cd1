"""Model registry: small named constructors, built by ``create_model(name, **kw)``."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ferkit.models.resnet import ResNet

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def describe_models() -> dict[str, str]:
    """Each registered model's name with the first line of its constructor's docstring, for help and docs."""
    return {name: ((fn.__doc__ or "").strip().splitlines() or [""])[0] for name, fn in sorted(_MODELS.items())}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build model ``name``; keyword arguments (stem, attention, in_chans, num_classes, ...) go to its constructor."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18: BasicBlock, stages [2, 2, 2, 2]."""
    return ResNet((2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34: BasicBlock, stages [3, 4, 6, 3]."""
    return ResNet((3, 4, 6, 3), **kwargs)


@register_model
def resnet_tiny(**kwargs) -> ResNet:
    """A tiny ResNet for tests and smoke runs: BasicBlock, stages [1, 1, 1, 1], widths 8-16-32-64."""
    return ResNet((1, 1, 1, 1), widths=(8, 16, 32, 64), **kwargs)
