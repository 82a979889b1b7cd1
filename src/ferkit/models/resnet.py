"""ResNet-18/34 and narrow variants (BasicBlock) with an attention layer on each residual branch, before the addition."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ferkit.models.attention import create_attention


class Stem(NamedTuple):
    """An input stem: one ``kernel`` x ``kernel`` conv of stride ``stride``, then BN and ReLU, then
    a 3x3 stride-2 max-pool when ``max_pool``."""

    kernel: int
    stride: int
    max_pool: bool


# The stems by name, from the finest stage-1 feature maps to the coarsest (sizes for a 48-px input).
STEMS: dict[str, Stem] = {
    "cifar": Stem(3, 1, False),     # 48-px maps, as the CIFAR ResNets
    "s2": Stem(3, 2, False),        # 24-px maps
    "imagenet": Stem(7, 2, True),   # 12-px maps, as the ResNet paper's ImageNet model
}


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``attention`` acts on the residual branch after its last BN."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, attention: str = "none", reduction: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = create_attention(attention, planes, reduction=reduction)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


def make_stem(stem: str, in_chans: int, width: int = 64) -> nn.Sequential:
    """The input stem ``stem`` (a name in :data:`STEMS`) from ``in_chans`` to ``width`` channels."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    spec = STEMS[stem]
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, width, spec.kernel, stride=spec.stride, padding=spec.kernel // 2, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    if spec.max_pool:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A ResNet whose ``forward_features`` gives the pooled feature the center/island losses need.

    ``layers`` gives the number of blocks per stage and ``widths`` the channels per stage (the
    ResNet paper's 64-128-256-512 by default); the pooled feature has ``widths[-1]`` dimensions,
    stored as ``num_features``. ``forward(x)`` returns logits; ``forward(x, return_features=True)``
    returns ``(features, logits)`` from the same pass.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_classes: int = 7,
        in_chans: int = 1,
        stem: str = "cifar",
        attention: str = "none",
        reduction: int = 16,
        drop_rate: float = 0.0,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ):
        super().__init__()
        if len(widths) != len(layers) or min(widths) < 1:
            raise ValueError(f"widths must be {len(layers)} positive channel counts, one per stage; got {widths}")
        self.stem = make_stem(stem, in_chans, widths[0])
        stages = []
        in_planes = widths[0]
        for i, (planes, depth) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, attention, reduction))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_planes
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Every BN starts at gamma = 1, the last of each residual branch included. Zeroing that one
        # (Goyal et al. 2017) starts each block as the identity, but with an attention gate behind it
        # the branch starts dead and its gradient is scaled by the gate (~0.25 for CBAM): 5-epoch
        # FER2013 runs of ResNet-18 + CBAM reached 49.8 % validation that way against 56.4 % with
        # gamma = 1, and the gated models lost most.

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, N x num_features x h x w."""
        return self.stages(self.stem(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally average-pooled feature, N x num_features."""
        return self.forward_maps(x).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features, N x num_classes."""
        return self.fc(self.drop(features))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return (features, logits) if return_features else logits
