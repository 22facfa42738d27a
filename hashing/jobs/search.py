"""Top-k Hamming search over the code shards of one model version: by key, by image file or by text.

    python pipelines/search.py --config configs/idhn.yaml --key query-0000000
    python pipelines/search.py --config configs/idhn.yaml --image photo.png [search.k=20]
    python pipelines/search.py --config configs/dsmhn.yaml --text "dress, handbag"   (text -> images)

Recipe: config -> the model pinned to a version (``search.version``, else ``search.alias``, default
``champion``) -> its code shards (the version's ``codes_uri`` tag, else
``{encode.codes_root}/{model}/v{version}``) -> the searched split (``--split``, default ``database``) ->
the query code: the stored code of ``--key`` (looked up in the searched split, then in the other of
query/database), or ``--image`` (any local or ``s3://`` image, preprocessed and encoded by the model),
or ``--text`` (comma-separated tags -> bag-of-words over the dataset's tag vocabulary -> the model's
text network; multimodal models only, e.g. DSMHN) -> ``hashing.index.HammingIndex`` with
``search.backend`` -> rank, key, Hamming distance and labels (class names from ``dataset.json``).

Every shard of the searched split in ``dataset.json`` must have its code part (as for evaluate);
``--allow-partial`` searches the parts there are and says how many are missing.

Backends (``search.backend``): ``faiss`` (``IndexBinaryFlat``, exact; the default) gives exactly the
ranking of ``numpy`` (our scan), ties in database order included; ``faiss-ivf`` (``IndexBinaryIVF``,
``search.nlist`` / ``search.nprobe``) is sub-linear and approximate, for large corpora; it is clustered
on the first search and kept under ``{codes_uri}/index/`` for the next ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hashing import registry, storage, tracking
from hashing.code_shards import CodeShardError, SplitCodes, list_parts, load_split, part_name
from hashing.codes import pack_signs
from hashing.config import Config
from hashing.data.schema import DatasetManifest, label_names, load_manifest
from hashing.data.tags import TagVocabulary
from hashing.data.transforms import decode_image
from hashing.errors import InputError, MissingError
from hashing.index import HammingIndex
from hashing.methods import method_class
from hashing.tracking import ResolvedModel

log = logging.getLogger("search")

SPLITS = ("database", "query")


@dataclass
class Hit:
    """One result: 1-based ``rank``, sample ``key``, Hamming ``distance``, class names (or indices)."""

    rank: int
    key: str
    distance: int
    labels: list[str]


@dataclass
class SearchResult:
    """The pinned model, what was searched (``codes_uri``/``split``, ``size`` items, ``backend``), the query
    as words (``query``) and the hits, best first."""

    model: ResolvedModel
    codes_uri: str
    split: str
    size: int
    backend: str
    query: str
    hits: list[Hit]


def main(argv: list[str] | None = None) -> int:
    """``hashing search ...``: 0 with results printed, 2 on bad input (unknown key, unreadable image, no text
    network)."""
    from hashing.cli import main as cli_main

    return cli_main(["search", *(sys.argv[1:] if argv is None else argv)])


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """The job as ``hashing search`` runs it (``hashing.jobs.runner``): results printed, exit code
    returned."""
    result = run_search(config, key=args.key, image=args.image, text=args.text, split=args.split,
                        allow_partial=args.allow_partial)
    if args.format == "json":
        print(json.dumps(result_json(result)))
        return 0
    print(f"model: models:/{result.model.name}/{result.model.version}")
    print(f"codes: {storage.join(result.codes_uri, result.split)} ({result.size} items, backend "
          f"{result.backend})")
    print(f"query: {result.query}")
    width = max([len("key"), *(len(h.key) for h in result.hits)])
    print(f"{'rank':>4}  {'key':<{width}}  {'distance':>8}  labels")
    for hit in result.hits:
        print(f"{hit.rank:>4}  {hit.key:<{width}}  {hit.distance:>8}  {', '.join(hit.labels)}")
    return 0


def result_json(result: SearchResult) -> dict:
    """``--format json``: the model, what was searched, the query and the hits (best first) as plain data."""
    return {"model": {"name": result.model.name, "version": result.model.version, "uri": result.model.uri},
            "codes": storage.join(result.codes_uri, result.split), "split": result.split, "size": result.size,
            "backend": result.backend, "query": result.query, "hits": [asdict(h) for h in result.hits]}


def run_search(config: Config, key: str | None = None, image: str | None = None, text: str | None = None,
               split: str = "database", allow_partial: bool = False) -> SearchResult:
    """Search ``split`` of the configured model version with exactly one of ``key``, ``image``, ``text``.

    Every shard of the split in ``dataset.json`` must have its code part (as for evaluate), unless
    ``allow_partial``: then the parts there are are searched and a warning says how many are missing.
    Without a readable ``dataset.json`` the parts cannot be checked and all of them are searched.

    Raises:
        LookupError: the model, version, alias or key does not exist.
        ConnectionError: no MLflow server answers at an ``http(s)://`` tracking URI; S3 does not answer.
        FileNotFoundError: no image at ``image``; no dataset at ``dataset.uri`` when one is needed
            (``search.model`` unset, or ``text``).
        ValueError: an unreadable image (or a folder), a model without a text network, no known tag in
            ``text``, code parts missing (unless ``allow_partial``), stale or not written by this model
            version.
    """
    if [key, image, text].count(None) != 2:
        raise ValueError("give exactly one of key, image, text")
    tracking.check_tracking_server(config)
    tracking.setup_tracking(config)
    manifest = _manifest(config, required=config.search.model is None or text is not None)
    model = tracking.resolve_section_model(config.search, config.method.name,
                                           manifest.name if manifest is not None else "")
    codes_uri = registry.codes_location(model, config.encode.codes_root)
    codes = load_codes(codes_uri, split, model, manifest, allow_partial)
    if key is not None:
        query, described = key_code(codes_uri, split, codes, model, key, manifest,
                                    allow_partial), f"key {key}"
    elif image is not None:
        query, described = image_code(model, image), f"image {image}"
    else:
        query, described = text_code(model, codes.method, TagVocabulary(manifest.tags or []),
                                     text), f"text {text!r}"
    if query.shape[1] != codes.codes.shape[1]:
        raise InputError(f"the query code has {query.shape[1] * 8} bits, the codes {codes.bits}")
    index = build_index(codes, codes_uri, split, config)
    distances, ids = index.search(query, config.search.k)
    classes = manifest.classes if manifest is not None else None
    hits = [Hit(rank, str(codes.keys[i]), int(d), label_names(codes.labels[i], classes))
            for rank, (d, i) in enumerate(zip(distances[0], ids[0], strict=True), start=1) if i >= 0]
    return SearchResult(model, codes_uri, split, len(codes), config.search.backend, described, hits)


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


def _manifest(config: Config, required: bool) -> DatasetManifest | None:
    """``dataset.json`` at ``dataset.uri``; when not ``required``, None (with a warning) if it cannot be
    read."""
    try:
        return load_manifest(config.dataset.uri)
    except (FileNotFoundError, ValueError) as exc:
        if required:
            raise
        log.warning("labels shown as class indices: %s", exc)
        return None


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
    other = next(s for s in SPLITS if s != split)
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
    method, model_config = tracking.load_hashing_model(model.uri)
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
    import torch

    if "text" not in method_class(method_name).modalities:
        raise InputError(f"models:/{model.name}/{model.version} ({method_name}) has no text network; "
                         "--text needs a multimodal model (e.g. method dsmhn); use --key or --image")
    tags = parse_tags(text, vocabulary)
    log.info("text query as tags: %s", tags)
    method, _ = tracking.load_hashing_model(model.uri)
    bag = torch.from_numpy(vocabulary.bag_of_words(tags)[None])
    with torch.inference_mode():
        return pack_signs(method.encode_text(bag).float())


if __name__ == "__main__":
    sys.exit(main())
