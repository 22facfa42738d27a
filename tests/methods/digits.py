"""Real training batches for the method tests: scikit-learn's 8x8 handwritten digits."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits


def digits_batch(n: int = 32, classes: int = 10, seed: int = 0,
                 parity_and_size: bool = False) -> dict[str, torch.Tensor]:
    """``n`` digits 0..classes-1 upsampled to ``image`` float32[n, 3, 16, 16] in [-1, 1], with one-hot
    ``labels`` float32[n, classes]; ``parity_and_size`` appends two more label columns, even and >= 5
    (multi-label, float32[n, classes + 2])."""
    digits = load_digits()
    idx = np.random.default_rng(seed).choice(np.flatnonzero(digits.target < classes), n, replace=False)
    img = np.kron(digits.images[idx] / 16.0, np.ones((2, 2)))
    images = torch.tensor((img - 0.5) / 0.5, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    y = digits.target[idx]
    labels = np.zeros((n, classes + 2 * parity_and_size), dtype=np.float32)
    labels[np.arange(n), y] = 1
    if parity_and_size:
        labels[:, classes] = y % 2 == 0
        labels[:, classes + 1] = y >= 5
    return {"image": images, "labels": torch.tensor(labels)}
