"""Attention layers for residual blocks: SE and ECA (channel only) and CBAM (channel then spatial).

Every layer takes ``channels`` first, then keyword options, and maps a C x H x W feature map to one of the
same shape, so a block can hold any of them through one argument (see :func:`create_attention`). A layer
joins the registry with :func:`register_attention` beside its class; config checks, model-file checks,
``ferkit models`` and the README's list all read the registry.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn


class AttentionEntry(NamedTuple):
    """A registered attention layer: its constructor ``(channels, **options)`` and a one-line summary."""

    layer: Callable[..., nn.Module]
    summary: str


ATTENTION_LAYERS: dict[str, AttentionEntry] = {}


def register_attention(name: str, summary: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the layer known to :func:`create_attention` (and the configs) as ``name``."""
    def add(layer: type[nn.Module]) -> type[nn.Module]:
        ATTENTION_LAYERS[name] = AttentionEntry(layer, summary)
        return layer
    return add


def create_attention(name: str, channels: int, **options: Any) -> nn.Module:
    """The attention layer called ``name`` for ``channels`` channels.

    ``options`` are the model's attention options (``reduction``, ...); each layer gets those its
    constructor names and no others, so a layer without a channel MLP need not take a ``reduction``.
    """
    if name not in ATTENTION_LAYERS:
        raise ValueError(f"unknown attention {name!r}; valid: {', '.join(ATTENTION_LAYERS)}")
    layer = ATTENTION_LAYERS[name].layer
    taken = inspect.signature(layer).parameters
    return layer(channels, **{key: value for key, value in options.items() if key in taken})


@register_attention("none", "no attention: the plain residual branch (the paper's Res18)")
class NoAttention(nn.Identity):
    """The identity: a block without attention."""

    def __init__(self, channels: int):
        super().__init__()


class ChannelGate(nn.Module):
    """Channel attention: ``sigmoid(MLP(pool(x)))`` per channel, one shared MLP ``C -> C/r -> C``.

    ``pools`` names the global pools whose MLP outputs are summed: SE uses ``("avg",)``,
    CBAM uses ``("avg", "max")``.
    """

    def __init__(self, channels: int, reduction: int = 16, pools: tuple[str, ...] = ("avg", "max")):
        super().__init__()
        unknown = set(pools) - {"avg", "max"}
        if not pools or unknown:
            raise ValueError(f"pools must be a non-empty subset of ('avg', 'max'), got {pools}")
        hidden = max(channels // reduction, 1)
        self.pools = pools
        # Linear layers on the pooled vectors: the same maths as CBAM's 1x1 convs, without the
        # per-call cost of a convolution kernel on a 1x1 map (5x faster inference on a CPU).
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self._register_load_state_dict_pre_hook(_conv_mlp_to_linear)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel map Mc, shape N x C x 1 x 1, values in (0, 1)."""
        pooled = []
        if "avg" in self.pools:
            pooled.append(x.mean(dim=(2, 3)))
        if "max" in self.pools:
            pooled.append(x.amax(dim=(2, 3)))
        # One MLP call for all pools, then the sum of its outputs per pool.
        logits = self.mlp(torch.cat(pooled)).view(len(pooled), *pooled[0].shape).sum(dim=0)
        return torch.sigmoid(logits)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def _conv_mlp_to_linear(state_dict: dict, prefix: str, *args) -> None:
    """Read checkpoints whose channel MLP was stored as 1x1 convolutions (C' x C x 1 x 1 weights)."""
    for key in (f"{prefix}mlp.0.weight", f"{prefix}mlp.2.weight"):
        if key in state_dict and state_dict[key].ndim == 4:
            state_dict[key] = state_dict[key].flatten(1)


class SpatialGate(nn.Module):
    """Spatial attention: ``sigmoid(conv_k([max_c(x); mean_c(x)]))``, one map shared by all channels."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=True)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map Ms, shape N x 1 x H x W, values in (0, 1)."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@register_attention("se", "squeeze-and-excitation: channel gate from the average pool (the paper's +SE)")
class SEModule(ChannelGate):
    """Squeeze-and-excitation (Hu et al.): average pool, MLP, sigmoid; the paper's 'Res18+channel(SE)'."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__(channels, reduction, pools=("avg",))


@register_attention("cbam", "CBAM: channel gate (average + max pools), then a 7x7 spatial gate (the paper's model)")
class CBAM(nn.Module):
    """CBAM (Woo et al. 2018): channel gate (avg + max pools) then spatial gate (7x7 conv).

    ``no_spatial=True`` leaves the channel gate alone, for ablations.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, no_spatial: bool = False):
        super().__init__()
        self.channel = ChannelGate(channels, reduction, pools=("avg", "max"))
        self.spatial = None if no_spatial else SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel(x)
        return x if self.spatial is None else self.spatial(x)


@register_attention("eca", "efficient channel attention: a 1-d conv across the pooled channels, no MLP")
class ECA(nn.Module):
    """ECA (Wang et al. 2020): ``sigmoid(conv1d_k(avgpool(x)))`` per channel, a k-tap conv across neighbouring
    channels instead of an MLP; ``k`` grows with log2 of the channel count (odd, at least 3) unless given."""

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2.0, beta: float = 1.0):
        super().__init__()
        if kernel_size is None:
            k = int(abs((math.log2(channels) + beta) / gamma))
            kernel_size = max(3, k if k % 2 else k + 1)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd whole number >= 1, got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel map, shape N x C x 1 x 1, values in (0, 1)."""
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)  # N x 1 x C: channels as a sequence
        return torch.sigmoid(self.conv(pooled)).transpose(1, 2).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
