"""Retrieval over the code shards of one model version: the stored codes of a split, the index over them,
and the query codes (by key, image file or text), as ``hashing search`` uses them.

- ``load_codes``: a split's code parts (checked against ``dataset.json`` and the model version).
- ``build_index``: the ``hashing.index.HammingIndex`` of ``search.backend`` (``faiss-ivf`` kept on disk).
- ``key_code`` / ``image_code`` / ``text_code``: the query code uint8[1, B] of a stored key, an image
  file, or comma-separated tags (``parse_tags``; multimodal models only).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashing import storage
from hashing.code_shards import CodeShardError, SplitCodes, list_parts, load_split, part_name
from hashing.config import Config
from hashing.data.schema import DatasetManifest
from hashing.data.splits import RETRIEVAL_SPLITS
from hashing.data.tags import TagVocabulary
from hashing.data.transforms import decode_image
from hashing.errors import InputError, MissingError
from hashing.index import HammingIndex
from hashing.methods import method_class
from hashing.mlflow.logged_model import load_hashing_model
from hashing.mlflow.registry import ResolvedModel

if TYPE_CHECKING:
    from hashing.encoding import Encoder

log = logging.getLogger(__name__)


def build_index(codes: SplitCodes, codes_uri: str, split: str, config: Config) -> HammingIndex:
    """The index of ``search.backend`` over ``codes``. A ``faiss-ivf`` index is clustered once and kept at
    ``{codes_uri}/index/{split}-ivf{nlist}-{digest}.faiss`` (digest of the part list and row count, so
    new or rewritten parts give a new file); later searches load it instead of clustering again."""
    ref = config.search
    if ref.backend != "faiss-ivf":
        return HammingIndex(codes.codes, codes.keys, backend=ref.backend)
    digest = hashlib.sha256(json.dumps([sorted(codes.parts), len(codes)]).encode()).hexdigest()[:16]
    stored = storage.join(codes_uri, "index", f"{split}-ivf{ref.nlist or 'auto'}-{digest}.faiss")
    if storage.exists(stored):
        log.info("faiss-ivf index from %s", stored)
        return HammingIndex(codes.codes, codes.keys, backend="faiss-ivf", nprobe=ref.nprobe,
                            trained=storage.read_bytes(stored))
    index = HammingIndex(codes.codes, codes.keys, backend="faiss-ivf", nlist=ref.nlist, nprobe=ref.nprobe)
    storage.write_bytes(stored, index.serialized())
    log.info("faiss-ivf index built and kept at %s", stored)
    return index


def load_codes(codes_uri: str, split: str, model: ResolvedModel, manifest: DatasetManifest | None = None,
               allow_partial: bool = False) -> SplitCodes:
    """The parts of ``split`` under ``codes_uri``, checked to be written by ``model`` and, with a
    ``manifest``, to be one per shard of the dataset's split (``allow_partial``: the shards that have one,
    with a warning).

    Raises ``CodeShardError`` naming the missing parts, or when there are none at all.
    """
    root = storage.join(codes_uri, split)
    expected = None
    if manifest is not None:
        expected = {s.path: s.sha256 for s in manifest.split(split).shards}
        if allow_partial:
            present = list_parts(root)
            missing = [s for s in expected if part_name(s) not in present]
            if missing:
                log.warning("searching %d of %d code parts of %s: no part for %s",
                            len(expected) - len(missing),
                            len(expected), root, ", ".join(missing))
            expected = {s: sha for s, sha in expected.items() if s not in missing}
    codes = load_split(root, expected=expected)
    if codes.model_uri != model.uri:
        raise CodeShardError(f"{storage.join(codes_uri, split)} was written by {codes.model_uri}, not "
                             f"{model.uri}; "
                             f"re-encode with `pipelines/encode.py encode.version={model.version} --force`")
    return codes


def key_code(codes_uri: str, split: str, codes: SplitCodes, model: ResolvedModel, key: str,
             manifest: DatasetManifest | None = None, allow_partial: bool = False) -> np.ndarray:
    """The stored code uint8[1, B] of ``key``: from the searched split, else from the other one."""
    row = codes.index_of().get(key)
    if row is not None:
        return codes.codes[row: row + 1]
    other = next(s for s in RETRIEVAL_SPLITS if s != split)
    try:
        other_codes = load_codes(codes_uri, other, model, manifest, allow_partial)
    except CodeShardError as exc:
        raise MissingError(f"key {key!r} is not in the {split} codes under {codes_uri}, and the {other} "
                           "codes "
                          f"cannot be read ({exc})") from None
    row = other_codes.index_of().get(key)
    if row is None:
        raise MissingError(f"key {key!r} is in neither the {split} nor the {other} codes under {codes_uri} "
                          f"(keys look like {codes.keys[0]!r})")
    return other_codes.codes[row: row + 1]


def image_code(model: ResolvedModel, path: str) -> np.ndarray:
    """The code uint8[1, B] of the image file at ``path``, preprocessed and encoded as the model was
    trained."""
    from hashing.encoding import Encoder

    if not storage.is_s3(path) and Path(path).is_dir():
        raise InputError(f"--image {path}: is a folder; give one image file")
    image = decode_image(storage.read_bytes(path), path)
    method, model_config = load_hashing_model(model.uri)
    return Encoder(method, model_config.dataset.image_size).encode_raw([image])


def parse_tags(text: str, vocabulary: TagVocabulary) -> list[str]:
    """Comma-separated tags -> vocabulary tags; words in a part are matched longest phrase first
    (``"ankle boot bag"`` -> ``["ankle boot", "bag"]``). Unknown words are logged and skipped.

    Raises:
        ValueError: the dataset has no tags, or no word of ``text`` is a tag.
    """
    if vocabulary.size == 0:
        raise InputError("the dataset has no tag vocabulary (dataset.json 'tags'): text search needs one")
    known = set(vocabulary.words)
    tags: list[str] = []
    unknown: list[str] = []
    for part in text.lower().split(","):
        words = part.split()
        i = 0
        while i < len(words):
            j = next((j for j in range(len(words), i, -1) if " ".join(words[i:j]) in known), None)
            if j is None:
                unknown.append(words[i])
                i += 1
            else:
                tags.append(" ".join(words[i:j]))
                i = j
    if unknown:
        log.warning("not in the tag vocabulary, ignored: %s", unknown)
    if not tags:
        raise InputError(f"no tag of the vocabulary in {text!r}; tags are: {', '.join(vocabulary.words)}")
    return tags


def text_code(model: ResolvedModel, method_name: str, vocabulary: TagVocabulary, text: str) -> np.ndarray:
    """The code uint8[1, B] of ``text`` (``parse_tags``, bag-of-words over ``vocabulary``) from the model's
    text network.

    Raises:
        ValueError: the method has no text network, no tag in ``text``, or ``vocabulary`` is not the size
            the model was trained with.
    """
    from hashing.encoding import Encoder

    if "text" not in method_class(method_name).modalities:
        raise InputError(f"models:/{model.name}/{model.version} ({method_name}) has no text network; "
                         "--text needs a multimodal model (e.g. method dsmhn); use --key or --image")
    tags = parse_tags(text, vocabulary)  # a text without a known tag fails before the model is downloaded
    method, _ = load_hashing_model(model.uri)
    return tags_code(Encoder(method), vocabulary, tags)


def tags_code(encoder: Encoder, vocabulary: TagVocabulary, tags: list[str]) -> np.ndarray:
    """The code uint8[1, B] of ``tags`` (from ``parse_tags``: words of ``vocabulary``), as a bag of words
    through ``encoder``'s text network (``hashing search --text``, the query service)."""
    log.info("text query as tags: %s", tags)
    return encoder.encode_tags(vocabulary.bag_of_words(tags)[None])
