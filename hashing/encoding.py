"""Images (or tags) -> codes with a method, and whole source shards -> code-shard parts.

``Encoder`` is the one place a method runs forward to encode: relaxed codes float32[n, K] (training
evaluation, benchmarks) or packed codes uint8[n, K // 8] (the encode job, serving, search), in
batches. ``ShardEncoder`` is the per-batch callable of ``pipelines/encode.py``'s Ray Data job: Ray
builds it once per actor (the model is loaded once there) and calls it on batches of whole shard
files (``read_binary_files`` rows: ``bytes``, ``path``); for each shard it decodes the samples,
encodes them and returns the finished Parquet part as bytes (``hashing.code_shards``), which the
driver writes whole-file. Both work without Ray: call them directly.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from hashing.code_shards import PartMeta, part_bytes
from hashing.codes import pack_signs
from hashing.data.quarantine import BadKind, BadSample
from hashing.data.read import decode_shard
from hashing.data.schema import ShardInfo
from hashing.data.transforms import Preprocess
from hashing.methods.base import Batch, HashingMethod

log = logging.getLogger(__name__)

# modality -> the batch key (``hashing.methods.base``) holding its input
INPUT_KEYS = {"image": "image", "text": "tags"}


class Encoder:
    """The one place a method runs forward to encode: images or tags -> relaxed or packed codes.

    Every call runs ``method`` in eval mode under ``torch.inference_mode``, in chunks of ``batch_size``
    rows moved to ``device``, and then puts back the train/eval mode it found (so a method can be
    encoded in the middle of its training). Modalities: ``"image"`` (``method.encode_image`` of
    preprocessed images float32[n, 3, S, S], or of precomputed features for the ``cached`` backbone)
    and ``"text"`` (``method.encode_text`` of bags of words float32[n, V], multimodal methods only).

    Args:
        method: a method (moved to ``device`` here).
        image_size: model input side S (``dataset.image_size`` of the model's config), for
            ``preprocess`` / ``encode_raw``; None when only preprocessed inputs are encoded.
        batch_size: rows per forward pass.
        device: ``"cpu"``, ``"cuda"``, ...
    """

    def __init__(self, method: HashingMethod, image_size: int | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.method = method.to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.preprocess = (None if image_size is None else
                           Preprocess(image_size, tuple(method.backbone.mean), tuple(method.backbone.std)))

    @classmethod
    def from_model_uri(cls, model_uri: str, tracking_uri: str | None = None, batch_size: int = 256,
                       device: str = "cpu") -> Encoder:
        """Load a logged hashing model (``models:/name/3``, ``runs:/...``) from MLflow at ``tracking_uri``."""
        import mlflow

        from hashing.mlflow.logged_model import load_hashing_model

        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        method, config = load_hashing_model(model_uri)
        log.info("loaded %s (%s, %d bits) on %s", model_uri, config.method.name, method.bits, device)
        return cls(method, config.dataset.image_size, batch_size, device)

    @property
    def bits(self) -> int:
        """Code length K."""
        return self.method.bits

    def relaxed(self, inputs: np.ndarray | torch.Tensor, modality: str = "image") -> np.ndarray:
        """Relaxed codes float32[n, K] of ``inputs`` (n rows of ``modality``'s input, see the class)."""
        encode = self._encoder_of(modality)
        inputs = torch.as_tensor(inputs)
        if inputs.shape[0] == 0:
            return np.zeros((0, self.bits), dtype=np.float32)
        was_training = self.method.training
        self.method.eval()
        try:
            with torch.inference_mode():
                parts = [encode(chunk.to(self.device, non_blocking=True)).float().cpu()
                         for chunk in inputs.split(self.batch_size)]
        finally:
            self.method.train(was_training)
        return torch.cat(parts).numpy()

    def relaxed_batches(self, batches: Iterable[Batch], modality: str = "image") -> np.ndarray:
        """Relaxed codes float32[n, K] of every row of ``batches`` (dicts as in ``hashing.methods.base``:
        ``batch["image"]`` for ``"image"``, ``batch["tags"]`` for ``"text"``), in order."""
        key = INPUT_KEYS.get(modality)
        self._encoder_of(modality)  # a bad modality fails before the first batch is read
        parts = [self.relaxed(batch[key], modality) for batch in batches]
        return np.concatenate(parts) if parts else np.zeros((0, self.bits), dtype=np.float32)

    def encode_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Preprocessed images float32[n, 3, S, S] -> packed codes uint8[n, bits // 8]."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("expected preprocessed images float32[n, 3, S, S], got shape "
                             f"{tuple(images.shape)}")
        return pack_signs(self.relaxed(images))

    def encode_tags(self, tags: np.ndarray | torch.Tensor) -> np.ndarray:
        """Bags of words float32[n, V] over the model's tag vocabulary -> packed text codes
        uint8[n, bits // 8] (multimodal methods only)."""
        return pack_signs(self.relaxed(tags, "text"))

    def encode_raw(self, images: list[np.ndarray]) -> np.ndarray:
        """Decoded images uint8[H, W, 3] (any size) -> packed codes uint8[n, bits // 8]."""
        if self.preprocess is None:
            raise ValueError("this Encoder was built without image_size: it encodes preprocessed images only")
        return self.encode_images(self.preprocess.batch(images))

    def _encoder_of(self, modality: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if modality not in INPUT_KEYS:
            raise ValueError(f"unknown modality {modality!r}; allowed: {', '.join(INPUT_KEYS)}")
        if modality not in self.method.modalities:
            raise ValueError(f"method {self.method.name!r} has no {modality!r} encoder; modalities: "
                             f"{', '.join(self.method.modalities)}")
        return self.method.encode_image if modality == "image" else self.method.encode_text


@dataclass(frozen=True)
class ShardRef:
    """A source shard to encode: its ``split``, full ``uri`` (for messages) and ``info`` from ``dataset.json``
    (``info.path`` is the source shard, e.g. ``database/shard-000004.tar``; size and sha256 are checked)."""

    split: str
    uri: str
    info: ShardInfo


@dataclass
class EncodedShard:
    """One shard's result: the Parquet part (bytes), rows in it, bad samples skipped, seconds spent."""

    part: bytes
    rows: int
    bad: list[BadSample]
    seconds: float


class ShardEncoder:
    """The ``map_batches`` callable: whole shard files in, one finished code-shard part per shard out.

    Args:
        model_uri: pinned model URI (``models:/name/3``), loaded once per instance.
        tracking_uri: MLflow tracking URI to load it from (None: the process's current one).
        shards: ``{path as the reader reports it: ShardRef}``; the path is matched without leading ``/``.
        num_classes: c, for label validation.
        dataset_fingerprint: written into each part's metadata.
        batch_size: images per forward pass.
        device: torch device of the model.
        encoder: an already built ``Encoder`` (tests, benchmarks); then ``model_uri`` is only recorded.

    Input batch: ``{"bytes": object[m] (tar file content), "path": object[m] (str)}``.
    Output batch (one row per shard): ``source_shard`` str, ``split`` str, ``part`` bytes (Parquet),
    ``rows`` int64, ``bad`` str (JSON list of ``BadSample.to_dict()``), ``seconds`` float64.
    """

    def __init__(self, model_uri: str, tracking_uri: str | None, shards: Mapping[str, ShardRef],
                 num_classes: int,
                 dataset_fingerprint: str, batch_size: int = 256, device: str = "cpu",
                 encoder: Encoder | None = None) -> None:
        self.encoder = encoder or Encoder.from_model_uri(model_uri, tracking_uri, batch_size, device)
        self.model_uri = model_uri
        self.shards = {path.lstrip("/"): ref for path, ref in shards.items()}
        self.num_classes = num_classes
        self.dataset_fingerprint = dataset_fingerprint

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"source_shard": [], "split": [], "part": [], "rows": [], "bad": [],
                                "seconds": []}
        for data, path in zip(batch["bytes"], batch["path"], strict=True):
            ref = self.shards.get(str(path).lstrip("/"))
            if ref is None:
                raise KeyError(f"shard {path!r} is not one of the {len(self.shards)} shards this encoder was "
                               "given")
            result = self.encode_shard(bytes(data), ref)
            out["source_shard"].append(ref.info.path)
            out["split"].append(ref.split)
            out["part"].append(result.part)
            out["rows"].append(result.rows)
            out["bad"].append(json.dumps([b.to_dict() for b in result.bad]))
            out["seconds"].append(result.seconds)
        return {
            "source_shard": np.array(out["source_shard"], dtype=object),
            "split": np.array(out["split"], dtype=object),
            "part": np.array(out["part"], dtype=object),
            "rows": np.array(out["rows"], dtype=np.int64),
            "bad": np.array(out["bad"], dtype=object),
            "seconds": np.array(out["seconds"], dtype=np.float64),
        }

    def encode_shard(self, data: bytes, ref: ShardRef) -> EncodedShard:
        """Decode, encode and pack one shard (``data``: the whole tar file) into its Parquet part.

        Bad samples are left out of the part and returned in ``bad``; the caller's ``Quarantine`` counts
        them (and raises in strict mode, before the part is written)."""
        start = time.perf_counter()
        bad: list[BadSample] = []
        keys: list[str] = []
        labels: list[list[int]] = []
        codes: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        for item in decode_shard(io.BytesIO(data), ref.uri, ref.info, self.num_classes,
                                 self.encoder.preprocess,
                                 vocab=None):
            if isinstance(item, BadSample):
                bad.append(item)
                continue
            keys.append(item["key"])
            labels.append(np.flatnonzero(item["labels"]).tolist())
            pending.append(item["image"])
            if len(pending) == self.encoder.batch_size:
                codes.append(self.encoder.encode_images(np.stack(pending)))
                pending = []
        if pending:
            codes.append(self.encoder.encode_images(np.stack(pending)))
        width = self.encoder.bits // 8
        packed = np.concatenate(codes) if codes else np.zeros((0, width), dtype=np.uint8)
        meta = PartMeta(bits=self.encoder.bits, method=self.encoder.method.name, model_uri=self.model_uri,
                        dataset_fingerprint=self.dataset_fingerprint, source_shard=ref.info.path,
                        source_sha256=ref.info.sha256)
        part = part_bytes(keys, packed, labels, meta)
        return EncodedShard(part, len(keys), bad, time.perf_counter() - start)


def bad_samples_from_json(text: str) -> list[BadSample]:
    """Parse the ``bad`` column of ``ShardEncoder`` output back into ``BadSample`` records."""
    return [BadSample(BadKind(d["kind"]), d["detail"], d.get("key"),
                      d.get("shard")) for d in json.loads(text)]
