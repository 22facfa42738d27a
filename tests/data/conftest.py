"""Fixtures of the data tests: small real photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Three real photos, 24x24 RGB uint8 (chelsea the cat, coffee, astronaut)."""
    return [np.asarray(Image.fromarray(img).resize((24, 24), Image.BILINEAR))
            for img in (skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut())]
