"""Encode benchmark: the Ray Data encode job (tar shards -> Parquet) vs a plain torch forward loop.

    .venv/bin/python benchmarks/encode_throughput.py [--config configs/idhn.yaml] [--preset small]
        [--actors 2] [--batch-size 256] [--threads N] [--workdir DIR] [key=value ...]

Recipe: the built-in dataset ``--preset`` is ingested (``pipelines/ingest.py``) into a temporary
folder -> the config's untrained model (default: IDHN on the pretrained EfficientNet-Lite0 at
``dataset.image_size`` 112 px, 48 bits; the weights do not change the cost) is logged and
registered in a sqlite MLflow there -> the same images of ``encode.splits`` go through:

1. plain loop: one process, ``torch.set_num_threads(--threads)``: read each tar, decode and
   preprocess its samples (``hashing.data.read``'s decoder, as the job), ``Encoder.encode_images`` in
   batches of ``--batch-size`` (eval and inference mode, ``pack_signs``). Decode and forward seconds
   are reported apart.
2. ShardEncoder, no Ray: ``hashing.encoding.ShardEncoder.encode_shard`` on each shard in this
   process (the job's per-shard work, Parquet part included), same threads.
3. Ray Data job: ``pipelines/encode.run_encode`` (``--force``), ``--actors`` actors of
   ``encode.cpus_per_actor`` CPUs (Ray gives each 1 torch thread); ``seconds`` = the job's own
   clock (read -> last part written, actor start-up and model loading included, ``ray.init`` not).
4. the same call end to end: ``ray.init`` + the job + the MLflow run, as ``python pipelines/encode.py`` does.

``--threads`` defaults to ``--actors``: the plain loop gets the cores the job's actors get.
Target (issue 7): the job reaches at least 85% of the plain loop's images/s.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mlflow

from benchmarks.common import builtin_config, machine, markdown_table
from hashing import storage
from hashing.code_shards import load_split
from hashing.config import Config, ConfigError
from hashing.data.read import decode_shard
from hashing.data.schema import DatasetManifest
from hashing.encoding import Encoder, ShardEncoder, ShardRef
from hashing.methods import from_config
from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.names import CHALLENGER, registered_model_name
from hashing.mlflow.registry import register_model
from hashing.mlflow.runs import set_experiment, setup_tracking, tracking_uri
from pipelines.encode import run_encode

log = logging.getLogger("bench.encode")

TARGET = 0.85
PLAIN = "plain torch loop (1 process)"


def prepare(workdir: Path, config_path: str, preset: str, overrides: list[str]) -> tuple[Config,
                                                                                         DatasetManifest]:
    """Ingest the built-in ``preset`` under ``workdir``, register the config's model; return both."""
    config, manifest = builtin_config(workdir, config_path, preset, overrides)
    setup_tracking(config)
    set_experiment(config, manifest.name)
    method = from_config(config, len(manifest.classes), len(manifest.tags or []))
    with mlflow.start_run(run_name="bench-encode-model"):
        uri = log_hashing_model(method, config)
    name = registered_model_name(config.method.name, manifest.name)
    version = register_model(uri, name, alias=CHALLENGER)
    config = config.model_copy(update={"encode": config.encode.model_copy(update={"model": name,
                                                                                  "version": version})})
    return config, manifest


def shard_refs(config: Config, manifest: DatasetManifest) -> list[ShardRef]:
    """The source shards of ``encode.splits``, in manifest order."""
    return [ShardRef(split, storage.join(config.dataset.uri, s.path), s)
            for split in config.encode.splits for s in manifest.split(split).shards]


def plain_loop(encoder: Encoder, refs: list[ShardRef], classes: int) -> dict[str, Any]:
    """Decode + forward every image of ``refs`` in this process; seconds split into decode and forward,
    and ``codes``: ``{key: packed code bytes}``."""
    batch_size, size = encoder.batch_size, encoder.preprocess.size
    encoder.encode_images(np.zeros((2, 3, size, size), np.float32))  # warm-up: one-off set-up costs
    decode_s = forward_s = 0.0
    codes: dict[str, bytes] = {}
    start = time.perf_counter()
    for ref in refs:
        t0 = time.perf_counter()
        data = storage.read_bytes(ref.uri)
        samples = [item for item in decode_shard(io.BytesIO(data), ref.uri, ref.info, classes,
                                                 encoder.preprocess,
                                                 vocab=None) if isinstance(item, dict)]
        t1 = time.perf_counter()
        for i in range(0, len(samples), batch_size):
            batch = samples[i : i + batch_size]
            packed = encoder.encode_images(np.stack([s["image"] for s in batch]))
            codes.update((s["key"], code.tobytes()) for s, code in zip(batch, packed, strict=True))
        decode_s += t1 - t0
        forward_s += time.perf_counter() - t1
    return {"images": len(codes), "seconds": time.perf_counter() - start, "decode_s": decode_s,
            "forward_s": forward_s, "codes": codes}


def shard_encoder_loop(encoder: Encoder, refs: list[ShardRef], config: Config, manifest: DatasetManifest,
                       model_uri: str) -> dict[str, float]:
    """``ShardEncoder.encode_shard`` (decode + forward + Parquet part) on every shard, in this process."""
    shard_encoder = ShardEncoder(model_uri, None, {}, len(manifest.classes), manifest.fingerprint,
                                 encoder=encoder)
    images = 0
    start = time.perf_counter()
    for ref in refs:
        images += shard_encoder.encode_shard(storage.read_bytes(ref.uri), ref).rows
    return {"images": images, "seconds": time.perf_counter() - start}


def ray_job(config: Config) -> dict[str, Any]:
    """``pipelines/encode.run_encode`` with ``force``: the job's own seconds, the whole call's, and the
    ``codes`` it wrote (``{key: packed code bytes}``, read back from the Parquet parts)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    start = time.perf_counter()
    result = run_encode(config, force=True, progress=False)
    end_to_end = time.perf_counter() - start
    codes: dict[str, bytes] = {}
    for split in config.encode.splits:
        written = load_split(storage.join(result.codes_uri, split))
        codes.update((key, code.tobytes()) for key, code in zip(written.keys, written.codes, strict=True))
    return {"images": result.rows, "seconds": result.seconds, "end_to_end_s": end_to_end, "codes": codes}


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 on success, 2 on bad arguments or config."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/idhn.yaml"))
    parser.add_argument("--preset", default="small", help="built-in dataset preset (tiny, small, default)")
    parser.add_argument("--actors", type=int, default=2, help="encode.actors of the Ray job")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per forward pass (encode.batch_size)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the plain loops (default: --actors)")
    parser.add_argument("--workdir", default=None,
                        help="keep the dataset and MLflow here (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    threads = args.threads or args.actors
    if min(args.actors, args.batch_size, threads) < 1:
        log.error("--actors, --batch-size and --threads must be >= 1")
        return 2
    overrides = [f"encode.actors={args.actors}", f"encode.batch_size={args.batch_size}", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        try:
            config, manifest = prepare(workdir, args.config, args.preset, overrides)
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 2
        refs = shard_refs(config, manifest)
        model_uri = f"models:/{config.encode.model}/{config.encode.version}"
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            encoder = Encoder.from_model_uri(model_uri, tracking_uri(config), args.batch_size)
            plain = plain_loop(encoder, refs, len(manifest.classes))
            shard = shard_encoder_loop(encoder, refs, config, manifest, model_uri)
        finally:
            torch.set_num_threads(torch_threads)
        job = ray_job(config)

    print(f"# Encode: {plain['images']} images ({', '.join(config.encode.splits)} of builtin-{args.preset}, "
          f"{len(refs)} shards), {config.method.name} on {config.model.backbone} at "
          f"{config.dataset.image_size} px, "
          f"{config.model.bits} bits, batch {args.batch_size}")
    print(machine())
    base = plain["images"] / plain["seconds"]
    rows = [
        [f"{PLAIN}, {threads} torch threads", plain["images"], f"{plain['seconds']:.1f}",
         f"{base:.1f}", "100%", f"decode {plain['decode_s']:.1f} s + forward {plain['forward_s']:.1f} s"],
        [f"ShardEncoder per shard, no Ray, {threads} torch threads", shard["images"],
         f"{shard['seconds']:.1f}",
         f"{shard['images'] / shard['seconds']:.1f}", f"{shard['images'] / shard['seconds'] / base:.0%}",
         "+ Parquet part per shard"],
        [f"Ray Data job, {args.actors} actors x {config.encode.cpus_per_actor} CPU (1 torch thread each)",
         job["images"], f"{job['seconds']:.1f}", f"{job['images'] / job['seconds']:.1f}",
         f"{job['images'] / job['seconds'] / base:.0%}",
         "read -> last part written (actor start-up included)"],
        ["same, end to end (ray.init + job + MLflow run)", job["images"], f"{job['end_to_end_s']:.1f}",
         f"{job['images'] / job['end_to_end_s']:.1f}", f"{job['images'] / job['end_to_end_s'] / base:.0%}",
         "what `python pipelines/encode.py` takes"],
    ]
    print(markdown_table(["implementation", "images", "seconds", "images/s", "vs plain loop", "notes"], rows))
    differing = sum(job["codes"].get(key) != code for key, code in plain["codes"].items())
    print("job codes == plain loop codes: "
          f"{'yes' if differing == 0 and len(job['codes']) == len(plain['codes']) else 'NO'}"
          f" ({len(job['codes'])} keys written, {differing} of {len(plain['codes'])} differ)")
    ratio = job["images"] / job["seconds"] / base
    print(f"target: job >= {TARGET:.0%} of the plain loop: {'met' if ratio >= TARGET else 'not met'} "
          f"({ratio:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
