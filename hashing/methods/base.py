"""The interface every hashing method implements, shared by the plain loop and the Ray Train worker.

A batch is a dict of tensors (all on the same device):
    ``image``   float32[b, 3, H, W]  preprocessed images (or, with the ``cached`` backbone,
                float32[b, feature_dim + spatial_dim] precomputed backbone features)
    ``labels``  float32[b, c]        multi-hot class labels (unsupervised methods must not read it)
    ``tags``    float32[b, V]        bag-of-words over the dataset's tag vocabulary (multimodal methods)

A method is an ``nn.Module`` holding every network it trains. Training runs in one or more
*phases* per step (most methods: ``("main",)``; adversarial ones add e.g. ``"discriminator"``);
each phase has its own optimizer over ``optimizer_groups(phase, lr)`` and is one forward + backward:

    for phase in method.phases:
        optimizers[phase].zero_grad()
        out = model(batch, phase=phase)        # model = method, or DDP(method)
        out["loss"].backward()
        optimizers[phase].step()

Calling the module (not a helper method) keeps DDP's gradient hooks in the path. Pairwise losses
pair the local rows with the *global* batch via ``hashing.methods.distributed.gather_with_grad``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from hashing.models.backbone import Backbone

Batch = dict[str, torch.Tensor]


def sign_codes(x: torch.Tensor) -> torch.Tensor:
    """Binary codes b = sign(x) in {-1, +1} with sign(0) = +1 (as ``hashing.codes.pack_signs``), same
    shape and dtype as ``x``, without gradient."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def label_graph(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S_ij = 1[l_i^T l_j > 0]: float32[m, n] in {0, 1} from multi-hot float32[m, c], float32[n, c]."""
    return ((labels_a.float() @ labels_b.float().T) > 0).float()


class HashingMethod(nn.Module):
    """Base class. Subclasses define the networks the method adds, ``forward`` and ``encode_image``.

    A subclass's constructor takes ``backbone, bits, num_classes``, its own hyperparameters as keywords
    and ``**common`` (``tag_vocab_size``, ``pretrained_lr_scale``), passed on here unchanged.

    Args:
        backbone: image feature extractor (see ``hashing.models.backbone``).
        bits: code length K, a multiple of 8 in [8, 1024].
        num_classes: c, width of ``batch["labels"]``.
        tag_vocab_size: V, width of ``batch["tags"]`` (0 when the dataset has no tags).
        pretrained_lr_scale: learning-rate multiplier for a pretrained backbone (IDHN: 0.01).
    """

    name: ClassVar[str]
    # False for methods fitted in closed form on backbone features (LSH, ITQ: ``fit_features``), not
    # trained by gradient steps; ``pipelines/train.py`` fits those in the driver, without Ray Train.
    trainable: ClassVar[bool] = True
    phases: ClassVar[tuple[str, ...]] = ("main",)
    uses_labels: ClassVar[bool] = True
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(
        self,
        backbone: Backbone,
        bits: int,
        num_classes: int,
        tag_vocab_size: int = 0,
        pretrained_lr_scale: float = 0.01,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.bits = bits
        self.num_classes = num_classes
        self.tag_vocab_size = tag_vocab_size
        self.pretrained_lr_scale = pretrained_lr_scale

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, <term>: scalar, ...}`` for one phase of one training step."""
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Relaxed image codes float32[b, K]; ``hashing.codes.pack_signs`` turns them into bits."""
        raise NotImplementedError

    def encode_text(self, tags: torch.Tensor) -> torch.Tensor:
        """Relaxed text codes float32[b, K] from bag-of-words ``tags`` float32[b, V] (multimodal only)."""
        raise NotImplementedError(f"method {self.name!r} has no text network")

    def check_phase(self, phase: str) -> None:
        """Raise ValueError unless ``phase`` is one of ``phases``."""
        if phase not in self.phases:
            raise ValueError(f"method {self.name!r} has no phase {phase!r}; phases: {self.phases}")

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """Parameters that ``phase``'s optimizer updates. Default: all of them (single-phase methods)."""
        self.check_phase(phase)
        return list(self.parameters())

    def optimizer_groups(self, phase: str, lr: float) -> list[dict]:
        """Param groups for ``phase``: a pretrained backbone at ``lr * pretrained_lr_scale``, the rest at
        ``lr``."""
        params = self.phase_parameters(phase)
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in params if id(p) in backbone_ids and p.requires_grad]
        new = [p for p in params if id(p) not in backbone_ids and p.requires_grad]
        scale = self.pretrained_lr_scale if self.backbone.pretrained else 1.0
        groups = [{"params": new, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * scale})
        return groups
