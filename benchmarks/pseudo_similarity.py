"""How well UDMSH's label-free pair distance ranks, per weight omega of its two levels, on validation.

    .venv/bin/python benchmarks/pseudo_similarity.py [--datasets default,single] [--omegas 1,0.5,0]
        [--preset frozen] [--image-size 64]

UDMSH's pseudo-labels are a monotone function of D = omega D_global + (1 - omega) D_spatial
(``hashing.methods.similarity.combined_distance``), so the ranking by D bounds what its codes can
learn from them. This scores that ranking directly: validation queries against the rest of train
(the quality protocol's selection split; never the query split), mAP@1000 with relevant = shares a
label, on the frozen pretrained backbone's cached features (``quality.py``'s cache). Use it to pick
``method.params.omega`` for a dataset: on the built-in multi-label mosaics (items in random cells) the
global level ranks better, on the single-label images (one item) the 2x2 spatial level does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.* when run as a script

from benchmarks import quality
from hashing.methods.similarity import combined_distance


def omega_scores(features: quality.FeatureSet, omegas: list[float]) -> dict[float, float]:
    """omega -> mAP@1000 of val queries vs train ranked by -D (the combined cosine distance)."""
    val, train = features.splits["val"], features.splits["train"]
    width = features.global_dim
    rows = torch.from_numpy(val.inputs).float(), torch.from_numpy(train.inputs).float()
    both = torch.cat(rows)  # combined_distance is all-pairs: the val x train block is what is ranked
    distances = {}
    for omega in omegas:
        d = combined_distance(both[:, :width], both[:, width:], omega)[: len(val.labels), len(val.labels) :]
        distances[omega] = quality.ranking_report(-d.numpy(), val.labels, train.labels)[quality.MAP]
    return distances


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="default,single", help="built-in datasets, comma-separated")
    parser.add_argument("--omegas", default="1,0.5,0", help="weights of the global distance, in [0, 1]")
    parser.add_argument("--preset", default="frozen", choices=("frozen", "smoke"), help="whose features")
    parser.add_argument("--image-size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "bench-cache")
    args = parser.parse_args(argv)
    omegas = [float(x) for x in args.omegas.split(",")]
    if not all(0.0 <= w <= 1.0 for w in omegas):
        parser.error(f"--omegas {args.omegas}: every weight must be in [0, 1]")
    datasets = args.datasets.split(",")
    print(f"Validation (val vs the rest of train) mAP@1000 of the ranking by UDMSH's combined distance, "
          f"{args.preset} features at {args.image_size} px, spatial level on a {quality.CACHED_GRID}x"
          f"{quality.CACHED_GRID} grid\n")
    print("| dataset | " + " | ".join(f"omega {w:g}" for w in omegas) + " |")
    print("|---|" + "---:|" * len(omegas))
    for dataset in datasets:
        if dataset not in quality.PRESETS:
            parser.error(f"--datasets: unknown built-in dataset {dataset!r}; one of {sorted(quality.PRESETS)}")
        preset = quality.PRESETS_BY_NAME[args.preset]
        preset = replace(preset, mode="frozen", image_size=args.image_size, dataset=dataset)
        features = quality.load_or_compute_features(preset, 0, args.cache_dir)
        scores = omega_scores(features, omegas)
        print(f"| {dataset} | " + " | ".join(f"{scores[w]:.4f}" for w in omegas) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
