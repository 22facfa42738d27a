"""Quality benchmark: every hashing method and baseline on a built-in dataset, chosen on validation.

    .venv/bin/python benchmarks/quality.py [--preset cpu|gpu|frozen|smoke] [--dataset default|single|...]
        [--bits 32,64] [--methods idhn,schn,dsmhn,udmsh,dpsh,lsh,itq,float[,schn-b]] [--seeds 0,1,2]
        [--grid small|none] [--epochs N] [--threads N] [--json PATH] [--mlflow URI]

Protocol (issue 13):
- Data: a built-in dataset (``default``: multi-label mosaics; ``single``: one item per image, the
  CIFAR-10 protocol). A **validation split** is carved out of ``train`` (the last ``val_size`` rows of a
  fixed permutation; never the query split): models train on the rest of ``train``.
- Presets: ``cpu`` runs the pretrained EfficientNet-Lite0 at the images' native 64 px; its early
  blocks (stem + blocks 0-14, through the 192-channel stride-32 stage) are **frozen and their outputs
  cached** once (with the 112-channel stage's map pooled to a 2x2 grid, the spatial features), and
  the **last stage (block 15: 320 channels) + the head conv + every method's own layers train**, with
  the same epochs / batch for every deep method (``CachedStage``). Training blocks 11-15 instead
  costs 4-11 min per training here (the depthwise convolutions' backward pass), too slow for the
  whole protocol in 90 minutes; with block 15 + head a training takes 35-136 s (SCHN the slowest),
  about 70 minutes for the protocol on one dataset. ``gpu``
  trains the **whole backbone** at 224 px for the paper-scale number of steps (80 epochs of 4000 rows
  at batch 128 = 2480 steps) on CUDA. ``frozen`` is the previous setup (backbone frozen, pooled
  features cached, 112 px); ``smoke`` is seconds (tiny dataset, random small CNN, 32 px).
- Selection: per method and code length, a small **grid** (learning rate x the method's one main
  constant, ``GRID``) is trained at the first seed and scored on validation (val queries vs the rest
  of train as database, mAP@1000); the best point is then trained at every seed and scored once on
  query vs database. ``--grid none`` uses the config's values only. Every deep method gets the same
  grid size and budget; LSH / ITQ have nothing to tune (they are fitted per seed).
- Report: **mean ± std over the seeds**; a target difference is **called** only when it exceeds both
  methods' stds (with one seed there is no spread, so nothing is called). The continuous-output mAP
  (cosine ranking of the relaxed codes) gives each deep method's quantisation ratio.
- ``schn-b`` (opt-in, not in the default ``--methods``): SCHN with the paper's learned database-code
  matrix (``codes: dataset``; B for the training rows, updated by DCC before training and after every
  epoch), same config, budget and grid as ``schn``; chosen on validation against its learned B. For
  ``schn`` and ``schn-b`` two more columns score the query against the **training rows** as database:
  their learned B (the paper's protocol, schn-b only) and their encoded sign(U_img).
- ``--mlflow URI``: one parent run per invocation, a child run per training (grid point or seed)
  with its parameters and validation / test metrics.

Hyperparameters not in the grid come from ``configs/{method}.yaml`` (learning rates of new and
pretrained layers, schedule, loss constants, ``model.spatial_grid``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.* when run as a script

from benchmarks.cached_features import CachedFeatures, CachedStage, check_pooled_grid
from hashing.codes import pack_signs
from hashing.config import ConfigError, load_config
from hashing.data.builtin import CLASSES, PRESETS, TAG_VOCABULARY, builtin_samples
from hashing.data.splits import SPLITS
from hashing.data.tags import TagVocabulary
from hashing.data.transforms import Preprocess
from hashing.encoding import Encoder
from hashing.methods import build_method
from hashing.methods.shallow import ITQ, LSH, cosine_ranking_report
from hashing.metrics import retrieval_report
from hashing.models import build_backbone
from hashing.models.backbone import CachedTrunk, Features
from hashing.training import fit, lr_step_size, new_train_state, run_epoch

log = logging.getLogger("quality")

DEEP_METHODS = ("idhn", "schn", "dsmhn", "udmsh", "dpsh", "schn-b")
SHALLOW_METHODS = ("lsh", "itq", "float")
ALL_METHODS = DEEP_METHODS + SHALLOW_METHODS
OPT_IN = ("schn-b",)  # run only when named in --methods
DEFAULT_METHODS = tuple(m for m in ALL_METHODS if m not in OPT_IN)
# A variant row: (the method and config it trains, method params it sets).
VARIANTS: dict[str, tuple[str, dict]] = {"schn-b": ("schn", {"codes": "dataset"})}
# Rows also scored with the training rows as database (query vs learned B / vs encoded train).
TRAIN_DATABASE = ("schn", "schn-b")
SUPERVISED_SEEDS = ("idhn", "schn", "dsmhn")
# What each row's training reads besides the images: shown in the table's "labels" column.
USES = {
    "idhn": "yes",
    "schn": "yes",
    "dsmhn": "yes + tags",
    "udmsh": "no",
    "dpsh": "yes",
    "schn-b": "yes",
    "lsh": "no",
    "itq": "no",
    "float": "no",
}
TOPK, NDCG_K, RADIUS = 1000, 100, 2
MAP, NDCG, PR = f"map@{TOPK}", f"ndcg@{NDCG_K}", f"p@r{RADIUS}"
FEATURE_BATCH = 64  # images per backbone forward pass while caching
ENCODE_BATCH = 512  # input rows per encode call
VAL_PERMUTATION_SEED = 12345  # fixes which train rows are validation (independent of --seeds)
# The small grid: learning-rate factors (x the config's train.lr) x values of the method's one main
# constant (the config's value first). Same size for every deep method.
LR_FACTORS = (1.0, 3.0)
GRID: dict[str, tuple[str, tuple[float, ...]]] = {
    "idhn": ("theta_scale", (0.5, 0.125)),  # theta = t <u, u'>; 0.125 is between the original 5/K and 0.5
    "schn": ("gamma", (10.0, 1.0)),  # weight of the quantisation to the learned codes B
    "dsmhn": ("lam", (0.1, 1.0)),  # weight of the label-prediction term
    # weight of the global vs the spatial distance: which level carries the classes depends on the data
    # (on validation, the cosine ranking of the 2x2 spatial features beats the global one on
    # ``single`` and loses on ``default``)
    "udmsh": ("omega", (1.0, 0.5)),
    "dpsh": ("eta", (0.1, 0.01)),  # quantisation weight
    "schn-b": ("gamma", (10.0, 1.0)),  # as schn
}


@dataclass(frozen=True)
class Preset:
    """What a run trains on and how.

    ``mode``: ``stage`` (EfficientNet-Lite0 blocks before ``stage_start`` frozen, their outputs
    cached; block ``stage_start`` on + heads train: ``CachedStage``), ``trunk`` (the backbone's
    ``trunk`` frozen and cached, ``from_trunk`` + heads train: ``CachedTrunk``), ``images`` (the whole
    backbone trains on images), ``frozen`` (pooled features cached; heads only).
    """

    dataset: str
    backbone: str
    pretrained: bool
    image_size: int
    epochs: int
    batch_size: int
    mode: str
    val_size: int
    description: str
    device: str = "cpu"
    trained: str = ""
    stage_start: int = 0  # ``stage`` mode: the first trained block


PRESETS_BY_NAME: dict[str, Preset] = {
    "cpu": Preset(
        "default",
        "efficientnet_lite0",
        True,
        64,
        10,
        128,
        "stage",
        1000,
        "2 CPU cores: native 64 px, stem + blocks 0-14 frozen and cached, block 15 (the 320-channel "
        "stage) + head conv + method layers trained, 10 epochs",
        trained="EfficientNet-Lite0 block 15 (the 320-channel stage) + head conv + method layers; "
        "stem + blocks 0-14 frozen (outputs cached)",
        stage_start=15,
    ),
    "gpu": Preset(
        "default",
        "efficientnet_lite0",
        True,
        224,
        80,
        128,
        "images",
        1000,
        "one GPU: whole backbone trained at 224 px, 80 epochs (~2500 steps, the papers' scale)",
        device="cuda",
        trained="the whole EfficientNet-Lite0 + method layers",
    ),
    "frozen": Preset(
        "default",
        "efficientnet_lite0",
        True,
        112,
        10,
        128,
        "frozen",
        1000,
        "the previous setup: backbone frozen at 112 px, pooled features cached, heads only",
        trained="method layers only (backbone frozen)",
    ),
    "smoke": Preset(
        "tiny",
        "small_cnn",
        False,
        32,
        2,
        64,
        "trunk",
        64,
        "seconds: tiny dataset, random small CNN at 32 px (stage 3 + heads trained), 2 epochs",
        trained="small CNN stage 3 + method layers",
    ),
}


@dataclass
class Split:
    """One split as arrays.

    ``inputs``: what the methods' backbone takes, by preset mode: ``CachedStage`` rows float16[n, w]
    (``stage``), trunk outputs float16[n, C, h, w] (``trunk``), raw images uint8[n, H, W] (``images``), or pooled [global, spatial] float32[n, d + s]
    (``frozen``). ``labels`` float32[n, c] multi-hot, ``tags`` float32[n, V] bag-of-words,
    ``features`` float32[n, d]: the frozen pretrained backbone's pooled global features (LSH, ITQ, float).
    """

    inputs: np.ndarray
    labels: np.ndarray
    tags: np.ndarray
    features: np.ndarray

    def rows(self, index: np.ndarray) -> Split:
        return Split(self.inputs[index], self.labels[index], self.tags[index], self.features[index])


@dataclass
class FeatureSet:
    """Every split (``train`` is the part trained on, ``val`` the part carved out for selection)."""

    splits: dict[str, Split]
    global_dim: int
    spatial_dim: int
    backbone_seed: int = 0  # seeds a random backbone (smoke) as the one that computed the cached inputs

    def global_features(self, split: str) -> np.ndarray:
        """float32[n, global_dim]: the frozen backbone's pooled last stage (what LSH, ITQ and float use)."""
        return self.splits[split].features


# --- inputs: computed once per (dataset, seed, backbone, size, mode) --------------------------------


def cache_path(cache_dir: Path, preset: Preset, seed: int) -> Path:
    """``{cache_dir}/{dataset}-seed{seed}-{backbone}[-random]-{size}px-{mode}[{stage_start}].npz``."""
    weights = "" if preset.pretrained else "-random"
    mode = f"{preset.mode}{preset.stage_start}" if preset.mode == "stage" else preset.mode
    return cache_dir / f"{preset.dataset}-seed{seed}-{preset.backbone}{weights}-{preset.image_size}px-{mode}.npz"


def _frozen_backbone(preset: Preset, seed: int, spatial_grid: int = 2):  # 2 = CACHED_GRID
    torch.manual_seed(seed)  # a random backbone (smoke preset) is the same on every run
    return build_backbone(preset.backbone, pretrained=preset.pretrained, spatial_grid=spatial_grid)


def compute_inputs(preset: Preset, seed: int) -> dict[str, Split]:
    """Run the frozen (eval-mode) backbone over every split of the built-in dataset."""
    device = torch.device(preset.device)
    backbone = _frozen_backbone(preset, seed).eval().to(device)
    if preset.mode == "stage":
        staged = CachedStage(backbone, preset.stage_start, preset.image_size, CACHED_GRID)
    preprocess = Preprocess(preset.image_size, backbone.mean, backbone.std)
    vocab = TagVocabulary(TAG_VOCABULARY)
    splits = {}
    for split in SPLITS:
        size = PRESETS[preset.dataset][split]
        started = time.perf_counter()
        inputs, features, tags, chunk = [], [], [], []
        labels = np.zeros((size, len(CLASSES)), np.float32)
        for i, sample in enumerate(builtin_samples(split, size, seed, preset=preset.dataset)):
            labels[i, sample.labels] = 1.0
            tags.append(sample.tags)
            chunk.append(sample.image)
            if len(chunk) == FEATURE_BATCH or i == size - 1:
                with torch.inference_mode():
                    x = torch.from_numpy(preprocess.batch(chunk)).to(device)
                    if preset.mode == "stage":
                        rows = staged.cache_rows(x)
                        out = staged(rows)
                        inputs.append(rows.half().cpu().numpy())
                    elif preset.mode == "trunk":
                        trunk = backbone.trunk(x)
                        out = backbone.from_trunk(trunk)
                        inputs.append(trunk.half().cpu().numpy())
                    else:
                        out = backbone(x)
                        if preset.mode == "frozen":
                            inputs.append(torch.cat([out.global_, out.spatial], 1).cpu().numpy())
                        else:
                            inputs.append(np.stack(chunk))
                    features.append(out.global_.float().cpu().numpy())
                chunk = []
        splits[split] = Split(
            np.concatenate(inputs), labels, vocab.bag_of_words_batch(tags), np.concatenate(features)
        )
        log.info(
            "inputs of %s (%d images, %d px, %s): %.0f s",
            split,
            size,
            preset.image_size,
            preset.mode,
            time.perf_counter() - started,
        )
    return splits


def load_or_compute_features(preset: Preset, seed: int, cache_dir: Path) -> FeatureSet:
    """The inputs of ``preset`` (cached in ``cache_dir``), with ``val`` carved out of ``train``."""
    path = cache_path(cache_dir, preset, seed)
    keys = ("inputs", "labels", "tags", "features")
    if path.exists():
        with np.load(path) as data:
            log.info("inputs from the cache %s", path)
            splits = {s: Split(*(data[f"{s}_{k}"] for k in keys)) for s in SPLITS}
    else:
        splits = compute_inputs(preset, seed)
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, **{f"{s}_{k}": getattr(splits[s], k) for s in SPLITS for k in keys})
        os.replace(partial, path)
        log.info("inputs cached in %s", path)
    backbone = _frozen_backbone(preset, seed)
    return carve_validation(splits, preset.val_size, backbone.feature_dim, backbone.spatial_dim, seed)


def carve_validation(
    splits: dict[str, Split], val_size: int, global_dim: int, spatial_dim: int, backbone_seed: int = 0
) -> FeatureSet:
    """``train`` -> ``train`` (the rest) + ``val`` (``val_size`` rows of a fixed permutation); query and
    database untouched. Validation never overlaps the query split."""
    full = splits["train"]
    n = len(full.labels)
    if not 0 < val_size < n:
        raise ValueError(f"validation size {val_size} must be in (0, {n}) (the train split's size)")
    order = np.random.default_rng(VAL_PERMUTATION_SEED).permutation(n)
    out = dict(splits)
    out["train"], out["val"] = full.rows(np.sort(order[:-val_size])), full.rows(np.sort(order[-val_size:]))
    return FeatureSet(out, global_dim, spatial_dim, backbone_seed)


# --- training and encoding --------------------------------------------------------------------------


class InputBatches:
    """Batches ``{"image", "labels", "tags", "index"}`` of a split in the form the preset's backbone
    takes; ``index`` int64[b]: the rows' positions in the split."""

    def __init__(self, preset: Preset, mean: tuple, std: tuple) -> None:
        self.preset = preset
        self.preprocess = Preprocess(preset.image_size, mean, std)
        self.device = torch.device(preset.device)

    def image(self, inputs: np.ndarray) -> torch.Tensor:
        if self.preset.mode == "images":
            x = torch.from_numpy(self.preprocess.batch(list(inputs)))
        else:
            x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        return x.to(self.device)

    def __call__(
        self, split: Split, batch_size: int, order: np.ndarray | None = None, drop_last: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = np.arange(len(split.labels)) if order is None else order
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            rows = order[start : start + batch_size]
            yield {
                "image": self.image(split.inputs[rows]),
                "labels": torch.from_numpy(split.labels[rows]).to(self.device),
                "tags": torch.from_numpy(split.tags[rows]).to(self.device),
                "index": torch.from_numpy(rows.astype(np.int64)).to(self.device),
            }


def batches(
    split: Split, batch_size: int, order: np.ndarray | None = None, drop_last: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of pooled-feature inputs (the ``frozen`` mode), on the CPU."""
    return InputBatches(PRESETS_BY_NAME["frozen"], (0.5,) * 3, (0.5,) * 3)(
        split, batch_size, order, drop_last
    )


@dataclass
class Trained:
    """Relaxed codes float32[n, K] by (modality, split), the per-epoch losses and the training time (s);
    ``train_codes``: a method's learned code matrix B float32[n_train, K] in {-1, +1} of the train split
    (SCHN with ``codes: dataset``), else None."""

    codes: dict[tuple[str, str], np.ndarray]
    losses: list[float]
    seconds: float
    method: object = None
    train_codes: np.ndarray | None = None


CACHED_GRID = 2  # the frozen and stage modes cache the spatial features pooled to this grid (_frozen_backbone)


class RegriddedFeatures(CachedFeatures):
    """Cached [global, spatial on a CACHED_GRID grid] rows, the spatial part re-pooled to ``grid``
    (1: one global mean per channel, the previous spatial branch), so ``model.spatial_grid`` applies."""

    def __init__(self, feature_dim: int, spatial_dim: int, grid: int) -> None:
        check_pooled_grid(grid, CACHED_GRID)
        super().__init__(feature_dim, spatial_dim // (CACHED_GRID // grid) ** 2)
        self.grid = grid
        self.cached_width = feature_dim + spatial_dim
        self.channels = spatial_dim // CACHED_GRID**2

    def forward(self, images: torch.Tensor):
        if images.ndim != 2 or images.shape[1] != self.cached_width:
            raise ValueError(
                f"expected cached rows float[b, {self.cached_width}], got shape {tuple(images.shape)}"
            )
        cells = images[:, self.feature_dim :].reshape(-1, self.channels, CACHED_GRID, CACHED_GRID)
        spatial = torch.nn.functional.adaptive_avg_pool2d(cells, self.grid).flatten(1)
        return Features(images[:, : self.feature_dim], spatial)


def method_backbone(preset: Preset, features: FeatureSet, spatial_grid: int):
    """The backbone a deep method trains with: ``CachedStage`` (``stage``) or ``CachedTrunk``
    (``trunk``) over a fresh pretrained backbone, the whole fresh backbone (``images``), or cached pooled features (``frozen``)."""
    if preset.mode == "frozen":
        if spatial_grid == CACHED_GRID:
            return CachedFeatures(features.global_dim, features.spatial_dim)
        return RegriddedFeatures(features.global_dim, features.spatial_dim, spatial_grid)
    backbone = _frozen_backbone(preset, features.backbone_seed, spatial_grid)
    if preset.mode == "stage":
        return CachedStage(backbone, preset.stage_start, preset.image_size, CACHED_GRID)
    return CachedTrunk(backbone) if preset.mode == "trunk" else backbone


# ``--override METHOD:key=value`` (repeatable): config overrides of one method, e.g. the original recipe
# ``idhn:method.params.theta_scale=null``; filled by ``main``.
CONFIG_OVERRIDES: dict[str, list[str]] = {}


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    """``["idhn:train.lr=0.01", ...]`` -> ``{"idhn": ["train.lr=0.01"]}``.

    Raises ValueError naming a bad item."""
    out: dict[str, list[str]] = {}
    for item in items:
        method, sep, override = item.partition(":")
        if not sep or method not in DEEP_METHODS or "=" not in override:
            raise ValueError(
                f"--override {item!r}: expected METHOD:key=value with METHOD one of "
                f"{', '.join(DEEP_METHODS)}, e.g. idhn:method.params.theta_scale=null"
            )
        out.setdefault(method, []).append(override)
    return out


def train_deep_method(
    name: str,
    bits: int,
    features: FeatureSet,
    preset: Preset,
    epochs: int,
    seed: int,
    lr_factor: float = 1.0,
    params: dict | None = None,
    splits: tuple[str, ...] = ("query", "database"),
) -> Trained:
    """Train method ``name`` (a method or a ``VARIANTS`` row; hyperparameters from
    ``configs/{method}.yaml`` with ``CONFIG_OVERRIDES[name]``, the variant's and then ``params``
    overriding its method params, lr x ``lr_factor``) on the ``train`` split with ``epochs`` epochs of
    shuffled batches of ``preset.batch_size`` rows (last partial batch dropped); encode ``splits``.
    A method with a training-set code matrix (SCHN ``codes: dataset``) gets ``train_size`` and its
    ``update_codes`` runs before the first epoch and after each (``train_epochs``)."""
    base, variant_params = VARIANTS.get(name, (name, {}))
    config = load_config(
        REPO / "configs" / f"{base}.yaml", [f"model.bits={bits}", *CONFIG_OVERRIDES.get(name, [])]
    )
    train = features.splits["train"]
    method_params = {**config.method.params, **variant_params, **(params or {})}
    if method_params.get("codes") == "dataset":
        method_params["train_size"] = len(train.labels)
    backbone = method_backbone(preset, features, config.model.spatial_grid)
    torch.manual_seed(seed)  # the method's own layers and the shuffling differ by seed, the backbone does not
    method = build_method(
        base,
        backbone=backbone,
        bits=bits,
        num_classes=train.labels.shape[1],
        tag_vocab_size=train.tags.shape[1],
        **method_params,
    )
    if hasattr(method, "set_tag_vocabulary"):
        method.set_tag_vocabulary(list(TAG_VOCABULARY))
    method.to(preset.device)
    make = InputBatches(preset, method.backbone.mean, method.backbone.std)
    steps_per_epoch = len(train.labels) // preset.batch_size

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(train.labels))
        return make(train, preset.batch_size, order, drop_last=True)

    started = time.perf_counter()
    if getattr(method, "codes", None) == "dataset":
        history = train_epochs(
            method,
            epoch_batches,
            lambda: make(train, preset.batch_size),
            epochs,
            config.train,
            lr_factor,
            steps_per_epoch,
        )
    else:
        history = fit(
            method,
            epoch_batches,
            epochs,
            config.train.lr * lr_factor,
            config.train.weight_decay,
            config.train.lr_step_every,
            config.train.lr_gamma,
            config.train.lr_decays,
            steps_per_epoch,
        )
    seconds = time.perf_counter() - started
    losses = [row.get("main/loss", row["loss"]) for row in history]  # a multi-phase method: its main phase
    log.info(
        "%s %d bits seed %d lr x%g %s: %.1f s, loss by epoch %s",
        name,
        bits,
        seed,
        lr_factor,
        params or {},
        seconds,
        [round(v, 4) for v in losses],
    )
    train_codes = method.train_codes.cpu().numpy() if getattr(method, "codes", None) == "dataset" else None
    return Trained(encode_method(method, features, preset, splits), losses, seconds, method, train_codes)


def train_epochs(
    method,
    epoch_batches,
    code_batches,
    epochs: int,
    train_config,
    lr_factor: float,
    steps_per_epoch: int,
) -> list[dict[str, float]]:
    """``hashing.training.fit`` with the training-set code update of SCHN ``codes: dataset``:
    ``method.update_codes(code_batches())`` (every training row once, in order) before the first
    epoch and after each (the reference's outer iteration). Returns fit's rows, each with
    ``codes_changed``: the fraction of B's bits that the update after that epoch flipped."""
    step_size = lr_step_size(epochs * steps_per_epoch, train_config.lr_step_every, train_config.lr_decays)
    state = new_train_state(
        method, train_config.lr * lr_factor, train_config.weight_decay, step_size, train_config.lr_gamma
    )
    method.update_codes(code_batches())
    history = []
    for epoch in range(epochs):
        row = run_epoch(state, epoch_batches(epoch))
        history.append({**row, "lr": state.lr(), "codes_changed": method.update_codes(code_batches())})
    log.info("codes flipped by each epoch's update: %s", [round(r["codes_changed"], 4) for r in history])
    return history


def encode_method(method, features: FeatureSet, preset: Preset, splits: tuple[str, ...]) -> dict:
    """Relaxed codes of ``splits`` for every modality of ``method``."""
    make = InputBatches(preset, method.backbone.mean, method.backbone.std)
    encoder = Encoder(method, batch_size=ENCODE_BATCH, device=preset.device)
    return {
        (modality, split): encoder.relaxed_batches(make(features.splits[split], ENCODE_BATCH), modality)
        for modality in method.modalities
        for split in splits
    }


def fit_shallow_method(
    name: str, bits: int, features: FeatureSet, seed: int, splits: tuple[str, ...] = ("query", "database")
) -> Trained:
    """LSH or ITQ fitted on the train split's global features; codes in {-1, +1}."""
    model = LSH(bits, seed=seed) if name == "lsh" else ITQ(bits, seed=seed)
    started = time.perf_counter()
    model.fit(features.global_features("train"))
    seconds = time.perf_counter() - started
    codes = {("image", s): model.encode(features.global_features(s)) for s in splits}
    return Trained(codes, [], seconds)


# --- scoring ----------------------------------------------------------------------------------------


def ranking_report(
    scores: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, topk: int = TOPK, ndcg_k: int = NDCG_K
) -> dict[str, float]:
    """mAP@topk and NDCG@ndcg_k of a ranking by ``scores`` float[m, n] (higher first, ties in database
    order), with the definitions of ``hashing.metrics`` (under the names ``MAP`` and ``NDCG``).

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


def score_codes(
    trained: Trained,
    features: FeatureSet,
    query: str = "query",
    database: str = "database",
    continuous: bool = False,
) -> dict[str, float]:
    """mAP@1000, NDCG@100, P@r<=2 of image query codes vs image database codes (I->I); for a method
    with a text network also the mAP@1000 of I->T, T->I and T->T (``CROSS_MODAL``). ``continuous``:
    also ``cont`` = mAP@1000 of the cosine ranking of the relaxed image codes (before the sign) and
    ``quant`` = mAP@1000 / cont (the quantisation ratio)."""
    q_labels = features.splits[query].labels.astype(np.uint8)
    db_labels = features.splits[database].labels.astype(np.uint8)
    packed = {key: pack_signs(u) for key, u in trained.codes.items()}
    report = retrieval_report(
        packed["image", query],
        packed["image", database],
        q_labels,
        db_labels,
        topk=TOPK,
        ndcg_k=NDCG_K,
        radius=RADIUS,
    )
    row = {MAP: report[MAP], NDCG: report[NDCG], PR: report[PR]}
    if ("text", query) in packed:
        for column, (q, db) in CROSS_MODAL.items():
            row[column] = retrieval_report(
                packed[q, query],
                packed[db, database],
                q_labels,
                db_labels,
                topk=TOPK,
                ndcg_k=NDCG_K,
                radius=RADIUS,
            )[MAP]
    if continuous:
        cont = cosine_ranking_report(
            trained.codes["image", query], trained.codes["image", database], q_labels, db_labels, TOPK, NDCG_K
        )[MAP]
        row["cont"], row["quant"] = cont, (row[MAP] / cont if cont > 0 else float("nan"))
    return row


def score_train_database(trained: Trained, features: FeatureSet, query: str = "query") -> dict[str, float]:
    """mAP@1000 of the image query codes of ``query`` with the **train** split as database:
    ``train_enc`` against the encoded train rows sign(U_img) (needs the ``("image", "train")`` codes),
    ``train_b`` against the method's learned code matrix B of those rows (when it has one)."""
    q_codes = pack_signs(trained.codes["image", query])
    q_labels = features.splits[query].labels.astype(np.uint8)
    db_labels = features.splits["train"].labels.astype(np.uint8)

    def against(db_codes: np.ndarray) -> float:
        return retrieval_report(
            q_codes, pack_signs(db_codes), q_labels, db_labels, topk=TOPK, ndcg_k=NDCG_K, radius=RADIUS
        )[MAP]

    row = {"train_enc": against(trained.codes["image", "train"])}
    if trained.train_codes is not None:
        row["train_b"] = against(trained.train_codes)
    return row


def validation_score(trained: Trained, features: FeatureSet) -> float:
    """The grid's criterion: mAP@1000 of val queries against the rest of train, as the method
    retrieves: its learned code matrix B when it has one (``schn-b``), else the encoded train rows."""
    if trained.train_codes is not None:
        return score_train_database(trained, features, "val")["train_b"]
    return score_codes(trained, features, "val", "train")[MAP]


def score_float_features(features: FeatureSet) -> dict[str, float]:
    """The ceiling: cosine ranking of the frozen backbone's global features (no codes, so no radius)."""
    return cosine_ranking_report(
        features.global_features("query"),
        features.global_features("database"),
        features.splits["query"].labels,
        features.splits["database"].labels,
        TOPK,
        NDCG_K,
    )


# --- the protocol: grid on validation, then seeds ----------------------------------------------------


class Tracker:
    """MLflow parent run + a child run per training, or nothing (``uri`` None)."""

    def __init__(self, uri: str | None, name: str, params: dict) -> None:
        self.enabled = uri is not None
        if self.enabled:
            import mlflow

            self.mlflow = mlflow
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("hashing-quality-benchmark")
            self.parent = mlflow.start_run(run_name=name)
            mlflow.log_params(params)

    @contextlib.contextmanager
    def child(self, name: str, params: dict):
        if not self.enabled:
            yield lambda metrics: None
            return
        with self.mlflow.start_run(run_name=name, nested=True):
            self.mlflow.log_params(params)
            yield lambda metrics: self.mlflow.log_metrics(
                {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if isinstance(v, float)}
            )

    def close(self, metrics: dict | None = None) -> None:
        if self.enabled:
            if metrics:
                self.mlflow.log_metrics(metrics)
            self.mlflow.end_run()


def grid_points(name: str, grid: str) -> list[tuple[float, dict]]:
    """``(lr_factor, method params)`` to try for method ``name``: one (the config) or the small grid."""
    if grid == "none" or name not in GRID:
        return [(1.0, {})]
    key, values = GRID[name]
    return [(lr, {key: v}) for lr in LR_FACTORS for v in values]


def point_label(lr_factor: float, params: dict) -> str:
    return ", ".join([f"lr x{lr_factor:g}", *(f"{k} {v:g}" for k, v in params.items())])


def run_deep(
    name: str,
    bits: int,
    features: FeatureSet,
    preset: Preset,
    epochs: int,
    seeds: list[int],
    grid: str,
    tracker: Tracker,
) -> dict:
    """Grid on validation at ``seeds[0]``, then the chosen point at every seed; one row (mean ± std)."""
    points = grid_points(name, grid)
    val_scores, kept = [], None
    for lr_factor, params in points:
        label = point_label(lr_factor, params)
        with tracker.child(
            f"{name}-{bits}-grid-{label}",
            {
                "method": name,
                "bits": bits,
                "seed": seeds[0],
                "lr_factor": lr_factor,
                **params,
                "stage": "grid",
            },
        ) as log_m:
            trained = train_deep_method(
                name, bits, features, preset, epochs, seeds[0], lr_factor, params, splits=("val", "train")
            )
            val = validation_score(trained, features)
            log_m({"val_map@1000": val, "train_seconds": trained.seconds})
        log.info("%s %d bits grid %s: val mAP@1000 %.4f", name, bits, label, val)
        val_scores.append(val)
        if val == max(val_scores):
            kept = trained
    best = int(np.argmax(val_scores))
    lr_factor, params = points[best]
    final_splits = ("query", "database", "train") if name in TRAIN_DATABASE else ("query", "database")
    per_seed, seconds = [], []
    for seed in seeds:
        with tracker.child(
            f"{name}-{bits}-seed{seed}",
            {"method": name, "bits": bits, "seed": seed, "lr_factor": lr_factor, **params, "stage": "final"},
        ) as log_m:
            if seed == seeds[0]:
                trained = kept
                trained.codes.update(encode_method(trained.method, features, preset, ("query", "database")))
            else:
                trained = train_deep_method(
                    name, bits, features, preset, epochs, seed, lr_factor, params, splits=final_splits
                )
            scores = score_codes(trained, features, continuous=True)
            if name in TRAIN_DATABASE:
                scores.update(score_train_database(trained, features))
            log_m({**scores, "train_seconds": trained.seconds})
        per_seed.append(scores)
        seconds.append(trained.seconds)
        trained.method = None
    return summarise(
        name,
        bits,
        per_seed,
        seconds,
        chosen=point_label(lr_factor, params),
        val=val_scores[best],
        grid_size=len(points),
    )


def run_shallow(name: str, bits: int, features: FeatureSet, seeds: list[int], tracker: Tracker) -> dict:
    per_seed, seconds = [], []
    for seed in seeds:
        with tracker.child(
            f"{name}-{bits}-seed{seed}", {"method": name, "bits": bits, "seed": seed}
        ) as log_m:
            trained = fit_shallow_method(
                name, bits, features, seed, splits=("val", "train", "query", "database")
            )
            scores = score_codes(trained, features)
            val = score_codes(trained, features, "val", "train")[MAP]
            log_m({**scores, "val_map@1000": val})
        per_seed.append(scores)
        seconds.append(trained.seconds)
    return summarise(name, bits, per_seed, seconds, chosen="-", val=val, grid_size=1)


def summarise(
    name: str, bits, per_seed: list[dict], seconds: list[float], chosen: str, val: float, grid_size: int
) -> dict:
    """One table row: the mean of every score over the seeds, ``{score}_std`` (0 for one seed) and
    the seeds' values."""
    row = {
        "method": name,
        "labels": USES[name],
        "bits": bits,
        "chosen": chosen,
        "val": val,
        "grid": grid_size,
        "seeds": len(per_seed),
        "seconds": float(np.mean(seconds)) if seconds else None,
        "per_seed": per_seed,
    }
    for key in per_seed[0]:
        values = np.array([s[key] for s in per_seed], dtype=np.float64)
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return row


# --- the table and the targets ----------------------------------------------------------------------


COLUMNS = [
    ("method", "method"),
    ("labels", "labels used"),
    ("bits", "bits"),
    ("chosen", "chosen on val"),
    ("val", "val mAP@1000"),
    (MAP, "mAP@1000"),
    (NDCG, "NDCG@100"),
    (PR, "P@r<=2"),
    ("quant", "sign / cont. mAP"),
    ("i2t", "I->T mAP@1000"),
    ("t2i", "T->I mAP@1000"),
    ("t2t", "T->T mAP@1000"),
    ("seconds", "train s"),
]
# Shown only when some row has them (schn, schn-b): the query against the train split as database.
TRAIN_DATABASE_COLUMNS = [
    ("train_b", "db = train (learned B) mAP@1000"),
    ("train_enc", "db = train (encoded) mAP@1000"),
]
# Printed under the table: which codes the unprefixed columns score.
COLUMN_NOTE = (
    "mAP@1000, NDCG@100 and P@r<=2 are I->I (image query codes vs image database codes; "
    "float: cosine of the features), mean ± std over the seeds; I->T, T->I, T->T: query modality -> "
    "database modality, DSMHN only (its text net encodes the bag-of-words tags); sign / cont. mAP: "
    "mAP@1000 of the sign codes over that of the cosine ranking of the same network's continuous "
    "outputs (the quantisation ratio); val mAP@1000: validation queries vs the rest of train, at the "
    "first seed, for the grid point chosen"
)
TRAIN_DATABASE_NOTE = (
    "db = train: image query codes vs the training rows (the train split without val) as database, "
    "mean ± std over the seeds; learned B: the code matrix B that schn-b keeps and updates by DCC "
    "(the paper's protocol; schn-b is chosen on val against it); encoded: the rows' sign(U_img)"
)


def table_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """``COLUMNS``, then the ``TRAIN_DATABASE_COLUMNS`` that some row has."""
    return COLUMNS + [(k, t) for k, t in TRAIN_DATABASE_COLUMNS if any(k in row for row in rows)]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``rows`` with ``table_columns(rows)`` (missing values shown as "-"; ``key_std``
    appended as ± when > 1 seed)."""

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key == "seconds":
            return f"{value:.1f}"
        if isinstance(value, float):
            std = row.get(f"{key}_std")
            return (
                f"{value:.4f} ± {std:.4f}" if std is not None and row.get("seeds", 1) > 1 else f"{value:.4f}"
            )
        return str(value)

    columns = table_columns(rows)
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "|".join("---" if k in ("method", "labels", "chosen") else "---:" for k, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row, key) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def compare(a: dict, b: dict, margin: float = 0.0) -> str:
    """``called``: mean(a) - mean(b) - margin exceeds both stds (a wins); ``called against``: b wins by
    more than both stds; otherwise ``not separable`` (always so with one seed: no spread to compare to)."""
    diff = a[MAP] - b[MAP] - margin
    stds = (a.get(f"{MAP}_std", 0.0), b.get(f"{MAP}_std", 0.0))
    if min(a.get("seeds", 1), b.get("seeds", 1)) < 2:
        return "not separable (one seed)"
    if diff > max(stds):
        return "called"
    if -diff > max(stds):
        return "called against"
    return "not separable"


def _verdict(outcome: str, wins: bool) -> str:
    if outcome == "called":
        return "met"
    if outcome == "called against":
        return "NOT met"
    return f"{'met' if wins else 'NOT met'} on the means, {outcome}"


def target_checks(rows: list[dict]) -> list[str]:
    """The targets of issue 13, one line each, with the numbers and whether the difference is called."""
    by = {(r["method"], r["bits"]): r for r in rows}
    lines = []
    for bits in sorted({r["bits"] for r in rows if r["bits"] != "-"}):
        for method in SUPERVISED_SEEDS:
            ours, dpsh, itq = by.get((method, bits)), by.get(("dpsh", bits)), by.get(("itq", bits))
            if ours is None or dpsh is None or itq is None:
                lines.append(f"skipped: {method} >= DPSH and > ITQ at {bits} bits (not all run)")
                continue
            for rival, strict in ((dpsh, False), (itq, True)):
                outcome = compare(ours, rival)
                wins = ours[MAP] > rival[MAP] if strict else ours[MAP] >= rival[MAP]
                if not strict and outcome == "not separable":
                    verdict = "met (no called difference)"  # >=: not worse by more than both stds
                else:
                    verdict = _verdict(outcome, wins)
                sign = ">" if strict else ">="
                lines.append(
                    f"{verdict}: {method} {sign} {rival['method'].upper()} at {bits} bits "
                    f"({ours[MAP]:.4f} vs {rival[MAP]:.4f})"
                )
        udmsh, itq = by.get(("udmsh", bits)), by.get(("itq", bits))
        if udmsh is not None and itq is not None:
            outcome = compare(udmsh, itq, margin=0.02)
            lines.append(
                f"{_verdict(outcome, udmsh[MAP] - itq[MAP] >= 0.02)}: udmsh (no labels) > ITQ + 0.02 at "
                f"{bits} bits ({udmsh[MAP]:.4f} vs {itq[MAP]:.4f})"
            )
    ceiling = by.get(("float", "-"))
    codes_64 = [r for r in rows if r["bits"] == 64]
    if ceiling is None or not codes_64:
        lines.append("skipped: best 64-bit codes >= the float-feature ceiling (not both run)")
    else:
        best = max(codes_64, key=lambda r: r[MAP])
        verdict = "met" if best[MAP] >= ceiling[MAP] else "NOT met"
        lines.append(
            f"{verdict}: best 64-bit codes ({best['method']}, {best[MAP]:.4f}) >= the float-feature "
            f"mAP@1000 ({ceiling[MAP]:.4f})"
        )
    for row in rows:
        if "quant" in row:
            verdict = "met" if row["quant"] >= 0.97 else "NOT met"
            lines.append(
                f"{verdict}: {row['method']} {row['bits']} bits quantisation ratio {row['quant']:.3f} "
                f"(sign {row[MAP]:.4f} / continuous {row['cont']:.4f}); target 0.97"
            )
    return lines


# --- the recipe -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS_BY_NAME),
        default="cpu",
        help="; ".join(f"{k}: {v.description}" for k, v in PRESETS_BY_NAME.items()),
    )
    parser.add_argument("--dataset", choices=sorted(PRESETS), help="built-in dataset (default: the preset's)")
    parser.add_argument("--bits", default="32,64", help="comma-separated code lengths (multiples of 8)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated subset of {','.join(ALL_METHODS)} (default: all but {','.join(OPT_IN)})",
    )
    parser.add_argument(
        "--seeds", default="0,1,2", help="initialisation / shuffling seeds (mean ± std over them)"
    )
    parser.add_argument(
        "--grid",
        choices=["small", "none"],
        default="small",
        help="small: lr x one main constant per deep method, chosen on validation; none: configs",
    )
    parser.add_argument("--epochs", type=int, help="override the preset's epochs (deep methods)")
    parser.add_argument(
        "--val-size", type=int, help="validation rows carved out of train (default: the preset's)"
    )
    parser.add_argument("--device", help="torch device (default: the preset's)")
    parser.add_argument("--image-size", type=int, help="model input side in pixels (default: the preset's)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD:key=value",
        help="config override for one deep method (repeatable), e.g. idhn:method.params.theta_scale=null",
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO / "runs" / "bench-cache",
        help="where backbone inputs / features are cached",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is faster on a shared, busy machine)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and target checks here")
    parser.add_argument("--mlflow", metavar="URI", help="log a parent run and a child run per training here")
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
        seeds = [int(s) for s in _choices(args.seeds, None, "seeds")]
        if any(b < 8 or b % 8 for b in bit_lengths):
            raise ValueError(f"--bits: code lengths must be multiples of 8 and >= 8, got {bit_lengths}")
        CONFIG_OVERRIDES.clear()
        CONFIG_OVERRIDES.update(parse_overrides(args.override))
        for flag in ("epochs", "threads", "val_size", "image_size"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS_BY_NAME[args.preset]
    preset = replace(
        preset,
        **{
            k: v
            for k, v in (
                ("dataset", args.dataset),
                ("device", args.device),
                ("val_size", args.val_size),
                ("image_size", args.image_size),
            )
            if v is not None
        },
    )
    epochs = args.epochs or preset.epochs
    started = time.perf_counter()

    features = load_or_compute_features(preset, args.data_seed, args.cache_dir)
    tracker = Tracker(
        args.mlflow,
        f"quality-{args.preset}-{preset.dataset}",
        {
            "preset": args.preset,
            "dataset": preset.dataset,
            "epochs": epochs,
            "seeds": args.seeds,
            "grid": args.grid,
            "bits": args.bits,
            "overrides": ";".join(args.override) or "-",
        },
    )
    rows = []
    try:
        if "float" in methods:
            rows.append(
                {
                    "method": "float",
                    "labels": USES["float"],
                    "bits": "-",
                    "chosen": "-",
                    **score_float_features(features),
                }
            )
        for bits in bit_lengths:
            for name in (m for m in ALL_METHODS if m in methods and m != "float"):
                try:
                    if name in DEEP_METHODS:
                        row = run_deep(name, bits, features, preset, epochs, seeds, args.grid, tracker)
                    else:
                        row = run_shallow(name, bits, features, seeds, tracker)
                except (ConfigError, ValueError) as exc:
                    log.error("%s at %d bits: %s", name, bits, exc)
                    return 2
                rows.append(row)
                log.info("%s", {k: v for k, v in row.items() if k != "per_seed"})
    finally:
        tracker.close()

    wall = time.perf_counter() - started
    sizes = {s: len(features.splits[s].labels) for s in ("train", "val", "query", "database")}
    print(
        f"Quality on the built-in dataset '{preset.dataset}' "
        f"({', '.join(f'{s} {n}' for s, n in sizes.items())}; val carved out of train), "
        f"preset {args.preset}: {preset.backbone} "
        f"({'ImageNet' if preset.pretrained else 'random'} weights) at {preset.image_size} px, "
        f"trained: {preset.trained}; deep methods: {epochs} epochs, batch {preset.batch_size}, "
        f"grid {args.grid}, "
        f"seeds {','.join(map(str, seeds))}; relevant = shares a label"
        + (f"; config overrides: {'; '.join(args.override)}" if args.override else "")
    )
    print()
    print(format_table(rows))
    print()
    print(COLUMN_NOTE)
    if len(table_columns(rows)) > len(COLUMNS):
        print()
        print(TRAIN_DATABASE_NOTE)
    print()
    checks = target_checks(rows)
    print("Targets (a difference is called only when it exceeds both stds):")
    for line in checks:
        print(f"- {line}")
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "dataset": preset.dataset,
                    "epochs": epochs,
                    "image_size": preset.image_size,
                    "overrides": args.override,
                    "seeds": seeds,
                    "grid": args.grid,
                    "rows": rows,
                    "targets": checks,
                    "wall_s": wall,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
