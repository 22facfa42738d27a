"""Encode a dataset into Parquet code shards with one registered model version (a Ray Data batch job).

    python pipelines/encode.py --config configs/idhn.yaml [encode.alias=champion | encode.version=3] [--force]
    python pipelines/encode.py --config configs/idhn.yaml --nightly        (the schedule in infra/)
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/encode.py ...

Recipe: config -> dataset.json -> the model pinned to a version (``encode.version``, else
``encode.alias``; ``--nightly``: ``champion``) -> the plan (``hashing.encode_plan``): for each split in
``encode.splits``, the source shards without a finished part under
``{encode.codes_root}/{model}/v{version}/{split}/`` (all of them with ``--force``) -> a Ray Data job:
``read_binary_files`` of those shards -> ``map_batches`` with a pool of ``encode.actors``
``hashing.encoding.ShardEncoder`` actors (each loads the model once; ``encode.batch_size`` images per
forward pass; ``encode.use_gpu``) -> the driver writes each returned part whole-file as it arrives ->
an MLflow run (model name and version, dataset fingerprint, parts written and skipped, rows, images/s,
``parts.json``, ``quarantine.json``) -> on success the run is tagged ``complete`` and the model version
gets ``codes_uri`` / ``codes_dataset_fingerprint`` tags.

A killed run leaves finished parts only (a part is written whole or not at all), so rerunning the
same command encodes just the missing ones and no key is ever written twice.

Nightly (``--nightly``): encodes the ``champion``. It looks up the last complete encode of this model
and codes root in MLflow: when the champion changed since (or there is none), everything is encoded
for the new version; otherwise only source shards added since (parts are kept per model version, so
both come down to "what this version has no finished part for"). The decision is logged as the run's
``mode`` tag.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from hashing import storage
from hashing.code_shards import part_uri, split_uri, version_uri
from hashing.config import Config
from hashing.data.quarantine import Quarantine
from hashing.data.schema import DatasetManifest, load_manifest
from hashing.encode_plan import nightly_mode, plan
from hashing.encoding import ShardEncoder, ShardRef, bad_samples_from_json
from hashing.errors import InputError
from hashing.mlflow import names
from hashing.mlflow.registry import ResolvedModel, resolve_section_model
from hashing.mlflow.runs import set_experiment, setup_tracking, tracking_uri
from hashing.ray_session import init_ray

log = logging.getLogger("encode")


@dataclass
class EncodeResult:
    """What one encode run did. ``written``/``skipped``: source shard paths; ``seconds``: wall time of
    the Ray job (0 when nothing was pending)."""

    model: ResolvedModel
    codes_uri: str
    run_id: str
    mode: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    quarantine: Quarantine = field(default_factory=Quarantine)

    @property
    def images_per_s(self) -> float:
        """Rows written per wall-clock second of the Ray job."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    """``hashing encode ...``: 0 on success, 2 on bad input or a missing model/dataset (one message)."""
    from hashing.cli import main as cli_main

    return cli_main(["encode", *(sys.argv[1:] if argv is None else argv)])


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """The job as ``hashing encode`` runs it (``hashing.jobs.runner``): results printed, exit code
    returned."""
    result = run_encode(config, nightly=args.nightly, force=args.force or config.encode.force,
                        progress=args.progress)
    print(f"model:  models:/{result.model.name}/{result.model.version} ({result.mode})")
    print(f"codes:  {result.codes_uri}")
    print(f"parts:  {len(result.written)} written, {len(result.skipped)} skipped (already finished)")
    print(f"rows:   {result.rows} in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s)")
    print(f"run:    {result.run_id} at {tracking_uri(config)}")
    return 0


def run_encode(config: Config, nightly: bool = False, force: bool = False,
               progress: bool = True) -> EncodeResult:
    """Plan, run and record one encode job (see the module docstring); returns what it did.

    Raises:
        FileNotFoundError / ValueError: no or a bad dataset at ``dataset.uri``.
        LookupError: the model, version or alias does not exist.
        TooManyBadSamplesError / BadInputError: bad samples past ``data.max_bad_fraction`` / in strict mode.
    """
    manifest = load_manifest(config.dataset.uri)
    setup_tracking(config)
    set_experiment(config, manifest.name)
    ref = (config.encode.model_copy(update={"alias": names.CHAMPION, "version": None}) if nightly
           else config.encode)
    model = resolve_section_model(ref, config.method.name, manifest.name)
    if model.name is None or model.version is None:
        raise InputError(f"encode.model={config.encode.model!r} is not a registered model: code shards are "
                         "kept "
                         "per registered version; give a registered name, models:/name/N or "
                         "models:/name@alias")
    mode = nightly_mode(config.encode.codes_root,
                        model) if nightly else ("forced" if force else "incremental")
    pending, skipped = plan(config, manifest, model, force)
    codes_uri = version_uri(config.encode.codes_root, model.name, model.version)
    log.info("%s v%d: %d parts to write, %d finished (%s) -> %s", model.name, model.version, len(pending),
             len(skipped), mode, codes_uri)

    with mlflow.start_run(run_name=config.run.name or f"encode-{model.name}-v{model.version}") as run:
        mlflow.set_tags({
            names.TAG_JOB: "encode", names.TAG_METHOD: config.method.name, names.TAG_MODEL_NAME: model.name,
            names.TAG_MODEL_VERSION: str(model.version), names.TAG_DATASET: manifest.name,
            names.TAG_DATASET_FINGERPRINT: manifest.fingerprint,
            names.TAG_CODES_ROOT: config.encode.codes_root, names.TAG_CODES_URI: codes_uri,
            names.TAG_MODE: mode, names.TAG_COMPLETE: "false", names.TAG_NIGHTLY: str(nightly).lower(),
        })
        mlflow.log_params({"model_uri": model.uri, "splits": json.dumps(config.encode.splits),
                           "batch_size": config.encode.batch_size, "actors": config.encode.actors,
                           "cpus_per_actor": config.encode.cpus_per_actor, "use_gpu": config.encode.use_gpu,
                           "force": force})
        result = EncodeResult(model, codes_uri, run.info.run_id, mode, skipped=sorted(skipped),
                              quarantine=Quarantine(strict=config.data.strict,
                                                    max_bad_fraction=config.data.max_bad_fraction))
        if pending:
            run_job(config, manifest, model, pending, result, progress)
        mlflow.log_metrics({"parts_written": len(result.written), "parts_skipped": len(result.skipped),
                            "rows": result.rows, "seconds": result.seconds,
                            "images_per_s": result.images_per_s,
                            "bad_samples": len(result.quarantine.records)})
        mlflow.log_dict({"codes_uri": codes_uri, "written": sorted(result.written),
                         "skipped": result.skipped},
                        "parts.json")
        mlflow.log_dict(result.quarantine.to_dict(), "quarantine.json")
        result.quarantine.check()
        mlflow.set_tag(names.TAG_COMPLETE, "true")
    client = MlflowClient()
    for key, value in ((names.CODES_URI, codes_uri),
                       (names.CODES_DATASET_FINGERPRINT, manifest.fingerprint),
                       (names.CODES_RUN_ID, result.run_id)):
        client.set_model_version_tag(model.name, str(model.version), key, value)
    return result


def run_job(config: Config, manifest: DatasetManifest, model: ResolvedModel, pending: dict[str, ShardRef],
            result: EncodeResult, progress: bool) -> None:
    """The Ray Data job over ``pending``; writes each part as it arrives and fills ``result``."""
    import ray

    started = init_ray(config.ray.address, config.ray.num_cpus)
    try:
        enc = config.encode
        fs, _ = storage.ray_filesystem(config.dataset.uri)
        paths = list(pending)
        start = time.perf_counter()
        data = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True,
                                          override_num_blocks=len(paths),
                                          num_cpus=enc.cpus_per_actor)
        parts = data.map_batches(
            ShardEncoder,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(enc.actors, len(paths))),
            num_cpus=enc.cpus_per_actor,
            num_gpus=1 if enc.use_gpu else 0,
            fn_constructor_kwargs={
                "model_uri": model.uri, "tracking_uri": tracking_uri(config), "shards": pending,
                "num_classes": len(manifest.classes), "dataset_fingerprint": manifest.fingerprint,
                "batch_size": enc.batch_size, "device": "cuda" if enc.use_gpu else "cpu",
            },
        )
        for row in tqdm(parts.iter_rows(), total=len(paths), unit="part", desc="encode",
                        disable=not progress):
            for bad in bad_samples_from_json(row["bad"]):
                result.quarantine.add(bad)  # strict mode: raises here, before the part is written
            result.quarantine.add_good(int(row["rows"]))
            root = split_uri(enc.codes_root, model.name, model.version, row["split"])
            storage.write_bytes(part_uri(root, row["source_shard"]), row["part"])
            result.written.append(row["source_shard"])
            result.rows += int(row["rows"])
        result.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
