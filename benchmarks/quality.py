"""Quality benchmark: every hashing method and baseline on the built-in dataset, one table.

    .venv/bin/python benchmarks/quality.py [--preset cpu|full|smoke] [--bits 16,32,64]
        [--methods idhn,schn,dsmhn,udmsh,dpsh,lsh,itq,float] [--epochs N] [--threads N] [--json PATH]

Recipe: build the built-in dataset in memory -> run the backbone once over train / query / database
and cache the pooled [global, spatial] features (``runs/bench-cache/``, keyed by dataset preset,
seed, backbone and input size) -> for each code length, train every deep method's networks on the
cached features (``CachedFeatures``: the backbone is frozen) with the plain loop of
``hashing.training`` and each method's hyperparameters from ``configs/{method}.yaml``, fit LSH and
ITQ on the same global features -> encode query and database, score query vs database -> print
one table (mAP@1000, NDCG@100, precision within Hamming radius 2 of image query codes vs image
database codes, i.e. I->I; I->T, T->I and T->T mAP@1000 for DSMHN) and the quality targets of
issue 3, met or not.

Every deep method gets the same epochs, batch size (one process, so this is the global batch) and
shuffling seed; learning rate, weight decay, lr schedule and loss constants are its config's.
Float features (cosine ranking of the same global features) are the ceiling, one row for all bits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hashing.codes import pack_signs
from hashing.config import ConfigError, load_config
from hashing.data.builtin import CLASSES, PRESETS, TAG_VOCABULARY, builtin_samples
from hashing.data.tags import TagVocabulary
from hashing.data.transforms import Preprocess
from hashing.methods import build_method
from hashing.methods.shallow import ITQ, LSH, FloatFeatures
from hashing.metrics import retrieval_report
from hashing.models import build_backbone
from hashing.models.small_cnn import CachedFeatures
from hashing.training import encode_batches, fit

log = logging.getLogger("quality")

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "query", "database")
DEEP_METHODS = ("idhn", "schn", "dsmhn", "udmsh", "dpsh")
SHALLOW_METHODS = ("lsh", "itq", "float")
ALL_METHODS = DEEP_METHODS + SHALLOW_METHODS
SUPERVISED_SEEDS = ("idhn", "schn", "dsmhn")
# What each row's training reads besides the images: shown in the table's "labels" column.
USES = {"idhn": "yes", "schn": "yes", "dsmhn": "yes + tags", "udmsh": "no", "dpsh": "yes",
        "lsh": "no", "itq": "no", "float": "no"}
TOPK, NDCG_K, RADIUS = 1000, 100, 2
MAP, NDCG, PR = f"map@{TOPK}", f"ndcg@{NDCG_K}", f"p@r{RADIUS}"
FEATURE_BATCH = 64  # images per backbone forward pass while caching features
ENCODE_BATCH = 1024  # feature rows per encode call


@dataclass(frozen=True)
class Preset:
    """What a run trains on: dataset preset, frozen backbone and its input side, and the training budget."""

    dataset: str
    backbone: str
    pretrained: bool
    image_size: int
    epochs: int
    batch_size: int
    description: str


PRESETS_BY_NAME: dict[str, Preset] = {
    "cpu": Preset("default", "efficientnet_lite0", True, 112, 10, 128,
                  "2 CPU cores in about an hour: 112 px input (the 56 px mosaics upsampled 2x), 10 epochs "
                  "(the configs' train.epochs)"),
    "full": Preset("default", "efficientnet_lite0", True, 224, 100, 128,
                   "ImageNet input size 224 px, 100 epochs"),
    "smoke": Preset("tiny", "small_cnn", False, 32, 2, 64,
                    "seconds: tiny dataset, random small CNN at 32 px, 2 epochs (a test of the script)"),
}


@dataclass
class Split:
    """One split as arrays: ``features`` float32[n, d + s] ([global, spatial], what ``CachedFeatures``
    takes), ``labels`` float32[n, c] multi-hot, ``tags`` float32[n, V] bag-of-words."""

    features: np.ndarray
    labels: np.ndarray
    tags: np.ndarray


@dataclass
class FeatureSet:
    """Cached backbone features of every split; ``global_dim`` + ``spatial_dim`` = feature width."""

    splits: dict[str, Split]
    global_dim: int
    spatial_dim: int

    def global_features(self, split: str) -> np.ndarray:
        """float32[n, global_dim]: the backbone's pooled last stage (what LSH, ITQ and float features use)."""
        return self.splits[split].features[:, : self.global_dim]


# --- features: the backbone runs once per (dataset, seed, backbone, size) ---------------------------


def cache_path(cache_dir: Path, preset: Preset, seed: int) -> Path:
    """``{cache_dir}/{dataset}-seed{seed}-{backbone}[-random]-{size}px.npz``."""
    weights = "" if preset.pretrained else "-random"
    return cache_dir / f"{preset.dataset}-seed{seed}-{preset.backbone}{weights}-{preset.image_size}px.npz"


def compute_features(preset: Preset, seed: int) -> FeatureSet:
    """Run the (frozen, eval-mode) backbone over every split of the built-in dataset."""
    torch.manual_seed(seed)  # a random backbone (smoke preset) is the same on every run
    backbone = build_backbone(preset.backbone, pretrained=preset.pretrained).eval()
    preprocess = Preprocess(preset.image_size, backbone.mean, backbone.std)
    vocab = TagVocabulary(TAG_VOCABULARY)
    splits = {}
    for split in SPLITS:
        size = PRESETS[preset.dataset][split]
        started = time.perf_counter()
        features, labels, tags = [], np.zeros((size, len(CLASSES)), np.float32), []
        chunk = []
        for i, sample in enumerate(builtin_samples(split, size, seed)):
            labels[i, sample.labels] = 1.0
            tags.append(sample.tags)
            chunk.append(sample.image)
            if len(chunk) == FEATURE_BATCH or i == size - 1:
                with torch.inference_mode():
                    out = backbone(torch.from_numpy(preprocess.batch(chunk)))
                features.append(torch.cat([out.global_, out.spatial], dim=1).numpy())
                chunk = []
        splits[split] = Split(np.concatenate(features), labels, vocab.bag_of_words_batch(tags))
        log.info("features of %s (%d images, %d px): %.0f s", split, size, preset.image_size,
                 time.perf_counter() - started)
    return FeatureSet(splits, backbone.feature_dim, backbone.spatial_dim)


def load_or_compute_features(preset: Preset, seed: int, cache_dir: Path) -> FeatureSet:
    """The cached features of ``preset`` if present, else computed and cached (written atomically)."""
    path = cache_path(cache_dir, preset, seed)
    if path.exists():
        with np.load(path) as data:
            log.info("features from the cache %s", path)
            splits = {s: Split(data[f"{s}_features"], data[f"{s}_labels"], data[f"{s}_tags"]) for s in SPLITS}
            return FeatureSet(splits, int(data["global_dim"]), int(data["spatial_dim"]))
    features = compute_features(preset, seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{k}": getattr(features.splits[s], k) for s in SPLITS for k in ("features", "labels", "tags")}
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, global_dim=features.global_dim, spatial_dim=features.spatial_dim, **arrays)
    os.replace(partial, path)
    log.info("features cached in %s", path)
    return features


# --- training and encoding --------------------------------------------------------------------------


def batches(split: Split, batch_size: int, order: np.ndarray | None = None,
            drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{"image", "labels", "tags"}`` of ``split`` rows in ``order`` (default: as stored)."""
    order = np.arange(len(split.features)) if order is None else order
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        rows = order[start : start + batch_size]
        yield {
            "image": torch.from_numpy(split.features[rows]),
            "labels": torch.from_numpy(split.labels[rows]),
            "tags": torch.from_numpy(split.tags[rows]),
        }


@dataclass
class Trained:
    """Relaxed codes float32[n, K] by (modality, split), the per-epoch losses and the training time (s)."""

    codes: dict[tuple[str, str], np.ndarray]
    losses: list[float]
    seconds: float


def train_deep_method(name: str, bits: int, features: FeatureSet, preset: Preset, epochs: int,
                      seed: int) -> Trained:
    """Train method ``name`` (hyperparameters from ``configs/{name}.yaml``) on the cached train features,
    with ``epochs`` epochs of shuffled batches of ``preset.batch_size`` rows (last partial batch dropped)."""
    config = load_config(REPO / "configs" / f"{name}.yaml", [f"model.bits={bits}"])
    train = features.splits["train"]
    torch.manual_seed(seed)
    method = build_method(
        name,
        backbone=CachedFeatures(features.global_dim, features.spatial_dim),
        bits=bits,
        num_classes=train.labels.shape[1],
        tag_vocab_size=train.tags.shape[1],
        **config.method.params,
    )

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(train.features))
        return batches(train, preset.batch_size, order, drop_last=True)

    started = time.perf_counter()
    history = fit(method, epoch_batches, epochs, config.train.lr, config.train.weight_decay,
                  config.train.lr_step_every, config.train.lr_gamma)
    seconds = time.perf_counter() - started
    losses = [row["loss"] if "loss" in row else row["main/loss"] for row in history]
    log.info("%s %d bits: %.1f s, loss by epoch %s", name, bits, seconds, [round(v, 4) for v in losses])
    codes = {}
    for modality in method.modalities:
        for split in ("query", "database"):
            codes[modality, split] = encode_batches(
                method, batches(features.splits[split], ENCODE_BATCH), modality
            )
    return Trained(codes, losses, seconds)


def fit_shallow_method(name: str, bits: int, features: FeatureSet, seed: int) -> Trained:
    """LSH or ITQ fitted on the train split's global features; codes in {-1, +1}."""
    model = LSH(bits, seed=seed) if name == "lsh" else ITQ(bits, seed=seed)
    started = time.perf_counter()
    model.fit(features.global_features("train"))
    seconds = time.perf_counter() - started
    codes = {("image", s): model.encode(features.global_features(s)) for s in ("query", "database")}
    return Trained(codes, [], seconds)


# --- scoring ----------------------------------------------------------------------------------------


def ranking_report(scores: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                   topk: int = TOPK, ndcg_k: int = NDCG_K) -> dict[str, float]:
    """mAP@topk and NDCG@ndcg_k of a ranking by ``scores`` float[m, n] (higher first, ties in database
    order), with the definitions of ``hashing.metrics`` (for the float-feature row, which has no codes).

    ``q_labels`` float[m, c], ``db_labels`` float[n, c] multi-hot; relevant = shares a label,
    gain 2^r - 1 with r = shared labels; a query without hits scores 0.
    """
    depth = min(max(topk, ndcg_k), scores.shape[1])
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    shared = q_labels.astype(np.float64) @ db_labels.astype(np.float64).T
    ranked = np.take_along_axis(shared, ids, axis=1)
    hits = ranked[:, : min(topk, depth)] > 0
    hit_number = np.cumsum(hits, axis=1) * hits
    ap = (hit_number / np.arange(1, hits.shape[1] + 1)).sum(axis=1) / np.maximum(hits.sum(axis=1), 1)
    k = min(ndcg_k, depth)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (np.exp2(ranked[:, :k]) - 1) @ discount
    best_shared = -np.sort(-shared, axis=1)[:, :k]  # the ideal ranking: most shared labels first
    ideal = (np.exp2(best_shared) - 1) @ discount
    ndcg = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
    return {MAP: float(ap.mean()), NDCG: float(ndcg.mean())}


CROSS_MODAL = {"i2t": ("image", "text"), "t2i": ("text", "image"), "t2t": ("text", "text")}


def score_codes(trained: Trained, features: FeatureSet) -> dict[str, float]:
    """mAP@1000, NDCG@100, P@r<=2 of image query codes vs image database codes (I->I); for a method
    with a text network also the mAP@1000 of I->T (image queries vs text database codes), T->I and
    T->T (text queries vs text database codes): ``CROSS_MODAL``."""
    q_labels = features.splits["query"].labels.astype(np.uint8)
    db_labels = features.splits["database"].labels.astype(np.uint8)
    packed = {key: pack_signs(u) for key, u in trained.codes.items()}
    report = retrieval_report(packed["image", "query"], packed["image", "database"], q_labels, db_labels,
                              topk=TOPK, ndcg_k=NDCG_K, radius=RADIUS)
    row = {MAP: report[MAP], NDCG: report[NDCG], PR: report[PR]}
    if ("text", "query") in packed:
        for column, (q, db) in CROSS_MODAL.items():
            row[column] = retrieval_report(packed[q, "query"], packed[db, "database"], q_labels, db_labels,
                                           topk=TOPK, ndcg_k=NDCG_K, radius=RADIUS)[MAP]
    return row


def score_float_features(features: FeatureSet) -> dict[str, float]:
    """The ceiling: cosine ranking of the global features (no codes, so no Hamming radius)."""
    encoder = FloatFeatures().fit(features.global_features("train"))
    scores = FloatFeatures.similarity(encoder.encode(features.global_features("query")),
                                      encoder.encode(features.global_features("database")))
    return ranking_report(scores, features.splits["query"].labels, features.splits["database"].labels)


# --- the table and the targets ----------------------------------------------------------------------


COLUMNS = [("method", "method"), ("labels", "labels used"), ("bits", "bits"), (MAP, "mAP@1000"),
           (NDCG, "NDCG@100"), (PR, "P@r<=2"), ("i2t", "I->T mAP@1000"), ("t2i", "T->I mAP@1000"),
           ("t2t", "T->T mAP@1000"), ("seconds", "train s")]
# Printed under the table: which codes the unprefixed columns score.
COLUMN_NOTE = ("mAP@1000, NDCG@100 and P@r<=2 are I->I (image query codes vs image database codes; "
               "float: cosine of the features); I->T, T->I, T->T: query modality -> database modality, "
               "DSMHN only (its text net encodes the bag-of-words tags)")


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``rows`` (missing values shown as "-")."""
    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key == "seconds":
            return f"{value:.1f}"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" if k in ("method", "labels") else "---:" for k, _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(row, key) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def target_checks(rows: list[dict]) -> list[str]:
    """The targets of issue 3, one line each: ``met`` / ``NOT met`` with the numbers, or ``skipped``."""
    score = {(r["method"], r["bits"]): r[MAP] for r in rows}
    lines = []
    for bits in (32, 64):
        for method in SUPERVISED_SEEDS:
            ours = score.get((method, bits))
            rivals = {b: score.get((b, bits)) for b in ("dpsh", "itq")}
            if ours is None or None in rivals.values():
                lines.append(f"skipped: {method} vs DPSH and ITQ at {bits} bits (not all run)")
                continue
            verdict = "met" if all(ours > v for v in rivals.values()) else "NOT met"
            lines.append(f"{verdict}: {method} beats DPSH and ITQ at {bits} bits "
                         f"({ours:.4f} vs {rivals['dpsh']:.4f}, {rivals['itq']:.4f})")
    for bits in sorted({r["bits"] for r in rows if r["method"] == "udmsh"}):
        ours, rivals = score[("udmsh", bits)], {b: score.get((b, bits)) for b in ("lsh", "itq")}
        if None in rivals.values():
            lines.append(f"skipped: udmsh vs LSH and ITQ at {bits} bits (not all run)")
            continue
        verdict = "met" if all(ours > v for v in rivals.values()) else "NOT met"
        lines.append(f"{verdict}: udmsh (no labels) beats LSH and ITQ at {bits} bits "
                     f"({ours:.4f} vs {rivals['lsh']:.4f}, {rivals['itq']:.4f})")
    ceiling = score.get(("float", "-"))
    codes_64 = {m: v for (m, b), v in score.items() if b == 64}
    if ceiling is None or not codes_64:
        lines.append("skipped: best 64-bit codes vs float features (not both run)")
    else:
        best = max(codes_64, key=codes_64.get)
        ratio = codes_64[best] / ceiling
        verdict = "met" if ratio >= 0.9 else "NOT met"
        lines.append(f"{verdict}: best 64-bit codes ({best}, {codes_64[best]:.4f}) reach {ratio:.1%} "
                     f"of the float-feature mAP@1000 ({ceiling:.4f}); target 90%")
    return lines


# --- the recipe -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS_BY_NAME), default="cpu",
                        help="; ".join(f"{k}: {v.description}" for k, v in PRESETS_BY_NAME.items()))
    parser.add_argument("--bits", default="16,32,64", help="comma-separated code lengths (multiples of 8)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs (deep methods)")
    parser.add_argument("--seed", type=int, default=0, help="dataset, initialisation and shuffling seed")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "bench-cache",
                        help="where backbone features are cached")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a shared, busy machine)")
    parser.add_argument("--json", type=Path, help="also write the rows and target checks here")
    return parser.parse_args(argv)


def _choices(text: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if allowed is not None and v not in allowed]
    if not values or bad:
        raise ValueError(f"--{what}: unknown {bad or 'empty list'}; allowed: {', '.join(allowed or ())}")
    return values


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        methods = _choices(args.methods, ALL_METHODS, "methods")
        bit_lengths = [int(b) for b in _choices(args.bits, None, "bits")]
        if any(b < 8 or b % 8 for b in bit_lengths):
            raise ValueError(f"--bits: code lengths must be multiples of 8 and >= 8, got {bit_lengths}")
        for flag in ("epochs", "threads"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS_BY_NAME[args.preset]
    epochs = args.epochs or preset.epochs
    started = time.perf_counter()

    features = load_or_compute_features(preset, args.seed, args.cache_dir)
    rows = []
    if "float" in methods:
        rows.append({"method": "float", "labels": USES["float"], "bits": "-", **score_float_features(features)})
    for bits in bit_lengths:
        for name in (m for m in ALL_METHODS if m in methods and m != "float"):
            try:
                if name in DEEP_METHODS:
                    trained = train_deep_method(name, bits, features, preset, epochs, args.seed)
                else:
                    trained = fit_shallow_method(name, bits, features, args.seed)
            except (ConfigError, ValueError) as exc:
                log.error("%s at %d bits: %s", name, bits, exc)
                return 2
            rows.append({"method": name, "labels": USES[name], "bits": bits,
                         **score_codes(trained, features), "seconds": trained.seconds})
            log.info("%s", rows[-1])

    wall = time.perf_counter() - started
    backbone = f"{preset.backbone} ({'ImageNet' if preset.pretrained else 'random'} weights, frozen)"
    print(f"Quality on the built-in dataset '{preset.dataset}' "
          f"({', '.join(f'{s} {PRESETS[preset.dataset][s]}' for s in SPLITS)}), preset {args.preset}: "
          f"{backbone} at {preset.image_size} px; deep methods: {epochs} epochs, batch {preset.batch_size}, "
          f"seed {args.seed}; relevant = shares a label")
    print()
    print(format_table(rows))
    print()
    print(COLUMN_NOTE)
    print()
    checks = target_checks(rows)
    print("Targets:")
    for line in checks:
        print(f"- {line}")
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "epochs": epochs, "rows": rows,
                                         "targets": checks, "wall_s": wall}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
