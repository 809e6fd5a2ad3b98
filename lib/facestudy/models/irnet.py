"""The IR (improved ResNet) backbone in the layout of AdaFace's ``net.py`` / CVLface's ``iresnet`` models, so a
user's released AdaFace checkpoint (e.g. ``adaface_ir101_webface4m.ckpt``) loads strictly (chapter 1, ``paper``).

It is the same network family as arcface_torch's IResNet (:mod:`facestudy.models.iresnet`) with other key
names and two differences that change the numbers: the first unit of every stage has a stride-2 *max-pool*
shortcut when the channel count does not change (arcface_torch uses a 1x1 conv there only when it changes),
and the embedding BatchNorm1d has no affine parameters. AdaFace's released models read **BGR** images
normalised as ``(x / 255 - 0.5) / 0.5`` (its ``inference.py``), so ``bgr=True`` here.

Keys: ``input_layer.{0 conv, 1 bn, 2 prelu}``, ``body.{i}.shortcut_layer.{0 conv, 1 bn}`` (absent for a
max-pool shortcut), ``body.{i}.res_layer.{0 bn, 1 conv, 2 bn, 3 prelu, 4 conv, 5 bn}``,
``output_layer.{0 bn2d, 3 linear, 4 bn1d}``. Depths 18, 34, 50 and 100 (AdaFace calls the last "IR-101").
"""
from __future__ import annotations

from torch import nn

from ..errors import ParameterError
from .base import FaceModel, _as_size

UNITS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3),
                                               100: (3, 13, 30, 3)}


class BasicBlockIR(nn.Module):
    """res_layer = BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN; shortcut = max-pool(1, stride) when
    the channels stay, else conv1x1 (stride) -> BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(cout), nn.PReLU(cout),
                                       nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(FaceModel):
    """AdaFace's IR backbone at 112 px: embedding = BN1d(no affine)(Linear(flatten(BN2d(7x7x512))))."""

    def __init__(self, depth: int = 100, embedding_dim: int = 512, input_size: int = 112,
                 name: str = "") -> None:
        if depth not in UNITS:
            raise ParameterError(f"IR depth must be one of {sorted(UNITS)}, got {depth}")
        size = _as_size(input_size)
        if size != (112, 112):
            raise ParameterError(f"the IR backbone here takes 112x112 faces (AdaFace's), got {size}")
        super().__init__(input_size=size, embedding_dim=embedding_dim, pixel_mean=127.5, pixel_std=127.5,
                         bgr=True, name=name or f"ir{depth}")
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, cin = [], 64
        for n, cout in zip(UNITS[depth], (64, 128, 256, 512), strict=True):
            for i in range(n):
                units.append(BasicBlockIR(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, embedding_dim),
                                          nn.BatchNorm1d(embedding_dim, affine=False))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x, keypoints=None):
        return self.output_layer(self.body(self.input_layer(x)))
