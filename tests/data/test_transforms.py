"""Decoding, PNG encoding and preprocessing: shapes, value ranges, normalisation, corrupt bytes."""

import pickle

import numpy as np
import pytest

from hashing.data.transforms import ImageDecodeError, Preprocess, decode_image, encode_png


def test_decode_gray_png_gives_rgb():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    rgb = decode_image(encode_png(gray), "x")
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb[:, :, 1], gray)


def test_encode_png_is_lossless_and_deterministic(photos):
    data = encode_png(photos[0])
    assert data.startswith(b"\x89PNG") and data == encode_png(photos[0].copy())
    np.testing.assert_array_equal(decode_image(data, "x"), photos[0])


def test_corrupt_bytes_name_the_item():
    with pytest.raises(ImageDecodeError, match="shard-000001.tar:key7"):
        decode_image(b"\x89PNG not really", "shard-000001.tar:key7")


def test_preprocess_normalises_known_pixels():
    pre = Preprocess(4, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    white = np.full((4, 4), 255, np.uint8)
    black = np.zeros((4, 4, 3), np.uint8)
    np.testing.assert_allclose(pre(white), np.ones((3, 4, 4)))
    np.testing.assert_allclose(pre(black), -np.ones((3, 4, 4)))
    imagenet = Preprocess(4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    np.testing.assert_allclose(imagenet(black)[:, 0, 0], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                               rtol=1e-5)


def test_preprocess_resizes_and_center_crops():
    pre = Preprocess(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    wide = np.zeros((16, 32, 4), np.uint8)
    wide[:, 8:24] = 255  # the middle half is white: resize to 8x16, center crop 8x8 keeps only white
    out = pre(wide)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    assert out[:, :, 1:7].min() > 0.99  # a squashing resize without the crop would show black edges
    assert out.min() > 0.5  # edge columns only blend with the bilinear filter
    assert pre.batch([wide, wide]).shape == (2, 3, 8, 8)


def test_preprocess_pickles_and_rejects_bad_shapes():
    pre = pickle.loads(pickle.dumps(Preprocess(8, (0.5,) * 3, (0.5,) * 3)))
    with pytest.raises(ValueError, match="shape"):
        pre(np.zeros((2, 2, 2, 2), np.uint8))
