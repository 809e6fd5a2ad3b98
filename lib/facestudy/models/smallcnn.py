"""SmallCNN: a CPU-sized face-recognition backbone family for 32-112 px inputs (chapters 1, 3, 5 train it
in the default profile).

``stages`` blocks of (conv3x3 stride 2 -> BN -> PReLU -> conv3x3 -> BN -> PReLU, with a 1x1 skip), channels
``width * 2**i`` (capped at ``max_width``), then BN -> flatten -> dropout -> linear -> BatchNorm1d, like the
IResNet head (spatial information is kept, not average-pooled).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ParameterError
from .base import FaceModel, _as_size


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.PReLU(cout)
        self.skip = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(cin, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.skip(x))


class SmallCNN(FaceModel):
    """A small residual CNN; ``input_size`` 32..112, ``stages`` 3 or 4, ``width`` 16..64."""

    def __init__(self, embedding_dim: int = 128, input_size: int | Sequence[int] = 64, width: int = 32,
                 stages: int = 4, max_width: int = 256, dropout: float = 0.0, name: str = "smallcnn") -> None:
        size = _as_size(input_size)
        f = 2 ** stages
        if stages < 1 or size[0] % f or size[1] % f:
            raise ParameterError(f"SmallCNN input_size {size} must be divisible by 2**stages = {f}")
        super().__init__(input_size=size, embedding_dim=embedding_dim, pixel_mean=127.5, pixel_std=127.5,
                         name=name)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.PReLU(width))
        blocks, cin = [], width
        for i in range(stages):
            cout = min(width * 2 ** i, max_width)
            blocks.append(_Block(cin, cout))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * (size[0] // f) * (size[1] // f), embedding_dim)
        self.features_bn = nn.BatchNorm1d(embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor, keypoints: torch.Tensor | None = None) -> torch.Tensor:
        x = self.bn(self.blocks(self.stem(x))).flatten(1)
        return self.features_bn(self.fc(self.dropout(x)))
