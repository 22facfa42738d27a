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
import json
import logging
import sys
from dataclasses import asdict, dataclass

from hashing import storage
from hashing.config import Config
from hashing.data.schema import DatasetManifest, label_names, load_manifest
from hashing.data.tags import TagVocabulary
from hashing.errors import InputError
from hashing.mlflow.registry import ResolvedModel, codes_location, resolve_section_model
from hashing.mlflow.runs import check_tracking_server, setup_tracking
from hashing.retrieval import build_index, image_code, key_code, load_codes, text_code

log = logging.getLogger("search")


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
    check_tracking_server(config)
    setup_tracking(config)
    manifest = _manifest(config, required=config.search.model is None or text is not None)
    model = resolve_section_model(config.search, config.method.name,
                                  manifest.name if manifest is not None else "")
    codes_uri = codes_location(model, config.encode.codes_root)
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


if __name__ == "__main__":
    sys.exit(main())
