"""Training benchmark: Ray Train (DDP) with 1 and 2 workers vs the plain single-process loop.

    .venv/bin/python benchmarks/training.py [--config configs/test.yaml] [--preset small]
        [--epochs 2] [--workers 1,2] [--threads 1] [--workdir DIR] [key=value ...]

Recipe: the built-in dataset ``--preset`` is ingested into a temporary folder -> the same method,
config and training split are trained

1. plain loop: ``hashing.training.fit`` in this process with ``--threads`` torch threads (default 1:
   Ray starts workers of fractional CPUs with ``OMP_NUM_THREADS=1``, so one worker gets one thread),
   batches of ``train.batch_size`` read and decoded from the same tar shards every epoch
   (``hashing.data.read.iter_split``, no shuffling), in line with the steps; and the same with the
   images decoded once before training (the steps then measure the model alone);
2. Ray Train with N workers for each N in ``--workers``: exactly what ``pipelines/train.py`` runs
   (``read_training_split`` -> ``fit``: ``TorchTrainer``, DDP over gloo, ``train.cpus_per_worker``
   CPUs per worker, Ray Data reading and decoding the shards, a checkpoint per epoch), on a fresh
   local ``ray.init`` per row. Every worker trains batches of ``train.batch_size``, so the global
   batch is N x that.

Each step's start and end are recorded (in Ray, on rank 0, by wrapping ``train_step`` in the worker).
Columns: time to the first step (from the start: for Ray, ``ray.init`` included), samples/s from
the first step's start to the last step's end (steady state) and over the whole run (start-up included).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import builtin_config, machine, markdown_table
from hashing.config import Config, ConfigError
from hashing.data.read import TORCH_COLUMNS, RemoteQuarantine, iter_split
from hashing.data.schema import DatasetManifest
from hashing.methods import from_config
from hashing.ray_training import read_training_split, run_trainer
from hashing.train_eval import make_preprocess
from hashing.training import fit

log = logging.getLogger("bench.training")


def plain_run(config: Config, manifest: DatasetManifest, in_memory: bool = False) -> dict[str, Any]:
    """``hashing.training.fit`` over batches decoded from the shards every epoch (``in_memory``: decoded
    once, before training; then the steps measure the model alone); step times recorded."""
    start = time.time()
    steps: list[tuple[float, float]] = []
    preprocess = make_preprocess(config)
    batch_size = config.train.batch_size
    decoded = list(iter_split(config.dataset.uri, "train", preprocess)) if in_memory else None

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rows: list[dict] = []
        for sample in decoded if in_memory else iter_split(config.dataset.uri, "train", preprocess):
            rows.append(sample)
            if len(rows) == batch_size:
                step_start = time.time()
                yield {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in TORCH_COLUMNS}
                steps.append((step_start, time.time()))  # resumed: the step on this batch is done
                rows = []

    method = from_config(config, len(manifest.classes), len(manifest.tags or []))
    fit(method, batches, config.train.epochs, config.train.lr, config.train.weight_decay,
        config.train.lr_step_every, config.train.lr_gamma)
    return {"start": start, "end": time.time(), "steps": steps, "global_batch": batch_size}


def timed_train_loop(loop_config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` with every ``train_step`` timed; adds ``step_times`` [(start, end)],
    ``loop_start`` (the worker entered the loop) and ``model_ready`` (model built, DDP-wrapped, checkpoint
    restored: the first ``run_epoch`` call), all ``time.time()`` seconds."""
    import hashing.train_worker as worker
    import hashing.training as loop

    original_step, original_epoch = loop.train_step, worker.run_epoch
    marks: dict[str, float] = {"loop_start": time.time()}
    step_times: list[tuple[float, float]] = []

    def timed_step(*args: Any, **kwargs: Any) -> dict[str, float]:
        step_start = time.time()
        terms = original_step(*args, **kwargs)
        step_times.append((step_start, time.time()))
        return terms

    def marked_epoch(*args: Any, **kwargs: Any) -> dict[str, float]:
        marks.setdefault("model_ready", time.time())
        return original_epoch(*args, **kwargs)

    loop.train_step, worker.run_epoch = timed_step, marked_epoch  # run_epoch calls loop.train_step
    try:
        result = worker.train_loop_per_worker(loop_config)
    finally:
        loop.train_step, worker.run_epoch = original_step, original_epoch
    return {**result, **marks, "step_times": step_times}


def ray_run(config: Config, manifest: DatasetManifest, workers: int) -> dict[str, Any]:
    """``pipelines/train.py``'s Ray Train job with ``workers`` workers on a fresh local Ray; rank 0's step
    times."""
    import ray
    import ray.cloudpickle
    import ray.data

    from hashing.ray_session import init_ray

    if __name__ != "__main__":  # imported (tests): ship this module's loop by value, workers cannot import it
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = config.model_copy(update={"train": config.train.model_copy(update={"num_workers": workers})})
    start = time.time()
    started = init_ray(config.ray.address, config.ray.num_cpus)
    ray_ready = time.time()
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        data = read_training_split(config, make_preprocess(config),
                                   RemoteQuarantine(config.data.max_bad_fraction))
        fit_start = time.time()
        result = run_trainer(config, manifest, data, run_name=f"bench-{workers}w-{int(start)}",
                             train_loop=timed_train_loop)
    finally:
        if started:
            ray.shutdown()
    rank0 = result.return_value
    steps = rank0["step_times"]
    startup = {
        "ray.init": ray_ready - start,
        "Ray Data plan (driver)": fit_start - ray_ready,
        "Ray Train controller + worker group + DDP process group": rank0["loop_start"] - fit_start,
        "model build + DDP wrap (ours, in the worker)": rank0["model_ready"] - rank0["loop_start"],
        "first batch (Ray Data read + decode + split)":
            steps[0][0] - rank0["model_ready"] if steps else float("nan"),
    }
    return {"start": start, "end": time.time(), "steps": steps, "startup": startup,
            "global_batch": config.train.batch_size * workers}


def summarise(name: str, run: dict[str, Any]) -> dict[str, Any]:
    """Table row of one run: steps, time to first step, steady and overall samples/s."""
    steps = run["steps"]
    if not steps:
        raise RuntimeError(f"{name}: no training step was recorded")
    samples = len(steps) * run["global_batch"]
    steady = steps[-1][1] - steps[0][0]
    total = run["end"] - run["start"]
    return {"run": name, "steps": len(steps), "global_batch": run["global_batch"], "samples": samples,
            "first_step_s": steps[0][0] - run["start"], "steady_s": steady, "total_s": total,
            "steady_samples_per_s": samples / steady if steady > 0 else float("nan"),
            "total_samples_per_s": samples / total,
            **({"startup": run["startup"]} if "startup" in run else {})}


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 on success, 2 on bad arguments or config."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/test.yaml"))
    parser.add_argument("--preset", default="small", help="built-in dataset preset (tiny, small, default)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray Train worker counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the plain loops (default 1: what Ray gives each worker)")
    parser.add_argument("--workdir", default=None,
                        help="keep dataset and checkpoints here (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        worker_counts = []
    if not worker_counts or min(worker_counts) < 1 or args.epochs < 1 or args.threads < 1:
        log.error("--workers must be comma-separated ints >= 1 (e.g. 1,2), --epochs and --threads >= 1")
        return 2
    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        try:
            config, manifest = builtin_config(Path(args.workdir or tmp).resolve(), args.config, args.preset,
                                              overrides)
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 2
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            threads = f"{args.threads} torch thread{'s' * (args.threads > 1)}"
            rows = [summarise(f"plain loop (1 process, {threads})",
                              plain_run(config, manifest)),
                    summarise("plain loop, images decoded once before",
                              plain_run(config, manifest, in_memory=True))]
        finally:
            torch.set_num_threads(torch_threads)
        for workers in worker_counts:
            rows.append(summarise(f"Ray Train, {workers} worker{'s' * (workers > 1)} x "
                                  f"{config.train.cpus_per_worker} CPU", ray_run(config, manifest, workers)))

    split = manifest.split("train")
    print(f"# Training: {config.method.name} on {config.model.backbone} at {config.dataset.image_size} px, "
          f"{config.model.bits} bits, builtin-{args.preset} train split ({split.samples} samples), "
          f"{config.train.epochs} epochs, {config.train.batch_size} samples per worker per step")
    print(machine())
    base = rows[0]
    print(markdown_table(
        ["run", "steps", "global batch", "time to first step (s)", "samples/s (steady)", "vs plain",
         "samples/s (with start-up)", "vs plain", "total s"],
        [[r["run"], r["steps"], r["global_batch"], f"{r['first_step_s']:.1f}",
          f"{r['steady_samples_per_s']:.1f}",
          f"{r['steady_samples_per_s'] / base['steady_samples_per_s']:.2f}x",
          f"{r['total_samples_per_s']:.1f}",
          f"{r['total_samples_per_s'] / base['total_samples_per_s']:.2f}x",
          f"{r['total_s']:.1f}"] for r in rows],
    ))
    ray_rows = [r for r in rows if "startup" in r]
    if ray_rows:
        print("\nTime to first step of the Ray runs, by stage (s; rank 0's clock for the worker stages):\n")
        print(markdown_table(["stage", *(r["run"] for r in ray_rows)],
                             [[stage, *(f"{r['startup'][stage]:.1f}" for r in ray_rows)]
                              for stage in ray_rows[0]["startup"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
