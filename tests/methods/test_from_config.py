"""``hashing.methods.from_config``: the configured method, the same for the same seed, the grid and
weights the config asks for."""

from __future__ import annotations

import pytest
import torch

from hashing.config import Config, load_config
from hashing.methods import from_config


def _config(**overrides: object) -> Config:
    base = {"model.backbone": "small_cnn", "model.bits": 16, "method.name": "udmsh", "run.seed": 5}
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def _weights(method: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in method.state_dict().values()]


def test_the_config_seed_fixes_the_initial_weights_whatever_the_global_rng_did() -> None:
    first = from_config(_config(), num_classes=0, tag_vocab_size=0)
    torch.rand(1000)  # moves the global generator: from_config must seed it itself
    again = from_config(_config(), num_classes=0, tag_vocab_size=0)
    other = from_config(_config(**{"run.seed": 6}), num_classes=0, tag_vocab_size=0)
    for a, b in zip(_weights(first), _weights(again), strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(_weights(first), _weights(other), strict=True))


def test_the_backbone_pools_the_configured_spatial_grid() -> None:
    method = from_config(_config(**{"model.spatial_grid": 3}), num_classes=0, tag_vocab_size=0)
    assert method.backbone.spatial_grid == 3
    features = method.backbone(torch.zeros(2, 3, 32, 32))
    assert features.spatial.shape == (2, method.backbone.spatial_channels * 9)
    assert method.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 16)  # UDMSH reads the 3x3 grid


def test_pretrained_follows_the_config_unless_the_caller_overrides_it() -> None:
    config = _config(**{"model.backbone": "mobilenet_v2", "method.name": "idhn"})
    assert config.model.pretrained is True
    assert from_config(config, num_classes=4, tag_vocab_size=0).backbone.pretrained is True
    assert from_config(config, num_classes=4, tag_vocab_size=0, pretrained=False).backbone.pretrained is False


def test_the_tag_vocabulary_reaches_a_method_that_embeds_it() -> None:
    config = _config(**{"method.name": "dsmhn", "method.params.text_encoder": "minilm",
                        "method.params.text_hidden": 8})
    # DSMHN checks the vocabulary's length before loading MiniLM: reaching that check proves it was passed.
    with pytest.raises(ValueError, match="3 tag words, got a vocabulary of 2"):
        from_config(config, num_classes=2, tag_vocab_size=3, tag_vocabulary=["a", "b"])
    assert from_config(config, num_classes=2, tag_vocab_size=3).text_net[0].in_features == 384
