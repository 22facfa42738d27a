"""pipelines/encode.py: code shards for a registered model version, incremental, killable, nightly.

A small random CNN (configs/test.yaml) is logged and registered in a sqlite MLflow under the test's
folder instead of being trained. The jobs run in-process on the session's local Ray (``ray_local``),
except the kill test, which runs the job as a user does, in its own process group, and SIGKILLs it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from hashing import storage
from hashing.code_shards import load_split, part_name, split_uri
from hashing.config import Config, load_config
from hashing.data.read import iter_shard, iter_split
from hashing.data.schema import DatasetManifest, load_manifest, write_manifest
from hashing.data.shards import ShardWriter
from hashing.encoding import Encoder
from hashing.methods import from_config
from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.names import CHALLENGER, CHAMPION
from hashing.mlflow.registry import register_model
from hashing.mlflow.runs import set_experiment, setup_tracking
from pipelines.encode import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/test.yaml")
MODEL_NAME = "hashing-idhn-builtin-tiny"
SPLITS = ("query", "database")
KILL_TIMEOUT_S = 240


@pytest.fixture(autouse=True)
def _restore_mlflow_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` points this process's MLflow at the test's database: undo that after each test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)


def _config(root: Path, dataset: str, *overrides: str) -> Config:
    return load_config(CONFIG, [f"run.root={root}", f"dataset.uri={dataset}", *overrides])


def _register(root: Path, dataset: str, seed: int) -> torch.nn.Module:
    """Log a random small-CNN IDHN (weights from ``seed``) and register it as the next version with
    aliases ``challenger`` and ``champion``; return the method."""
    config = _config(root, dataset, f"run.seed={seed}")
    manifest = load_manifest(dataset)
    setup_tracking(config)
    set_experiment(config, manifest.name)
    method = from_config(config, len(manifest.classes), len(manifest.tags or []))
    with mlflow.start_run():
        uri = log_hashing_model(method, config)
    version = register_model(uri, MODEL_NAME, alias=CHALLENGER)
    MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
    return method.eval()


def _encode(root: Path, dataset: str, *args: str) -> int:
    return main(["--config", CONFIG, f"run.root={root}", f"dataset.uri={dataset}", "--no-progress", *args])


def _client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db",
                        registry_uri=f"sqlite:///{root}/mlflow.db")


def _encode_runs(root: Path) -> list:
    """Encode runs, oldest first."""
    client = _client(root)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.job = 'encode'",
                              order_by=["attributes.start_time ASC"])
    return list(runs)


def _shards(dataset: str) -> dict[str, dict[str, str]]:
    """``{split: {source shard: sha256}}`` for the encoded splits."""
    manifest = load_manifest(dataset)
    return {split: {s.path: s.sha256 for s in manifest.split(split).shards} for split in SPLITS}


def _check_codes(codes_root: str, version: int, dataset: str, method: torch.nn.Module) -> None:
    """Every key of query and database exactly once, with the codes the method gives directly."""
    encoder = Encoder(method, image_size=32)
    for split, expected in _shards(dataset).items():
        codes = load_split(split_uri(codes_root, MODEL_NAME, version, split), expected)
        samples = list(iter_split(dataset, split, encoder.preprocess))
        assert sorted(codes.keys.tolist()) == sorted(s["key"] for s in samples), split
        direct = encoder.encode_images(np.stack([s["image"] for s in samples]))
        row = codes.index_of()
        np.testing.assert_array_equal(codes.codes[[row[s["key"]] for s in samples]], direct)
        assert codes.model_uri == f"models:/{MODEL_NAME}/{version}"


def _part_files(codes_root: Path) -> dict[str, int]:
    """``{part path: mtime in ns}`` of the finished parts under ``codes_root``."""
    return {str(p.relative_to(codes_root)): p.stat().st_mtime_ns for p in codes_root.rglob("part-*.parquet")}


# --- fast: bad input is one clear message ---------------------------------------------------------------


def test_a_missing_model_or_alias_is_a_clear_error(tiny_dataset: str, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    assert _encode(tmp_path, tiny_dataset) == 2
    assert f"no registered model '{MODEL_NAME}'" in caplog.text and "pipelines/train.py" in caplog.text

    _register(tmp_path, tiny_dataset, seed=0)
    caplog.clear()
    assert _encode(tmp_path, tiny_dataset, "encode.alias=nightly-best") == 2
    assert "has no alias @nightly-best; versions: [1]; aliases: @challenger=v1, @champion=v1" in caplog.text
    caplog.clear()
    assert _encode(tmp_path, tiny_dataset, "encode.version=7") == 2
    assert "has no version 7" in caplog.text
    assert not (tmp_path / "codes").exists()


def test_the_nightly_schedule_runs_a_command_encode_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    """The RayJob in infra/cronjob-nightly-encode.yaml: its first step (the nightly encode) parses
    (``--print-config``)."""
    (configmap,) = [d for d in yaml.safe_load_all((REPO / "infra/cronjob-nightly-encode.yaml").read_text())
                    if d and d["kind"] == "ConfigMap"]
    entrypoint = yaml.safe_load(configmap["data"]["rayjob.yaml"])["spec"]["entrypoint"]
    first_step = entrypoint.split("&&")[0]  # then encode the challenger, evaluate both, promote
    python, script, *args = shlex.split(first_step.replace("/app/", f"{REPO}/"))
    assert (python, script, "--nightly" in args) == ("python", f"{REPO}/pipelines/encode.py", True)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print-config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["encode"]["codes_root"].startswith("s3://") and printed["encode"]["use_gpu"] is True


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_encode_writes_each_key_once_then_skips_finished_parts_and_force_rewrites(
    ray_local: None, tiny_dataset: str, tmp_path: Path
) -> None:
    method = _register(tmp_path, tiny_dataset, seed=0)
    parts = sum(len(shards) for shards in _shards(tiny_dataset).values())
    rows = sum(load_manifest(tiny_dataset).split(split).samples for split in SPLITS)

    assert _encode(tmp_path, tiny_dataset) == 0
    _check_codes(str(tmp_path / "codes"), 1, tiny_dataset, method)
    first = _part_files(tmp_path / "codes")
    assert len(first) == parts

    assert _encode(tmp_path, tiny_dataset) == 0
    assert _part_files(tmp_path / "codes") == first  # nothing rewritten

    assert _encode(tmp_path, tiny_dataset, "--force") == 0
    forced = _part_files(tmp_path / "codes")
    assert forced.keys() == first.keys() and all(forced[p] > first[p] for p in first)
    _check_codes(str(tmp_path / "codes"), 1, tiny_dataset, method)

    full, rerun, force = _encode_runs(tmp_path)
    for run in (full, rerun, force):
        assert run.info.status == "FINISHED"
        assert run.data.tags["complete"] == "true"
        assert (run.data.tags["model_name"], run.data.tags["model_version"]) == (MODEL_NAME, "1")
        assert run.data.tags["dataset_fingerprint"] == load_manifest(tiny_dataset).fingerprint
    assert {k: full.data.metrics[k] for k in ("parts_written", "parts_skipped", "rows")} == {
        "parts_written": parts, "parts_skipped": 0, "rows": rows}
    assert full.data.metrics["images_per_s"] > 0
    assert {k: rerun.data.metrics[k] for k in ("parts_written", "parts_skipped", "rows", "images_per_s")} == {
        "parts_written": 0, "parts_skipped": parts, "rows": 0, "images_per_s": 0}
    assert (force.data.metrics["parts_written"], force.data.metrics["parts_skipped"]) == (parts, 0)
    assert force.data.tags["mode"] == "forced"

    # What evaluate / promote / search read: the version's codes and the dataset they were made from.
    version = _client(tmp_path).get_model_version(MODEL_NAME, "1")
    assert version.tags["codes_uri"] == str(tmp_path / "codes" / MODEL_NAME / "v1")
    assert version.tags["codes_dataset_fingerprint"] == load_manifest(tiny_dataset).fingerprint


def _without_last_database_shard(dataset: str, folder: Path) -> tuple[str, DatasetManifest]:
    """A copy of ``dataset`` whose ``dataset.json`` lacks the last database shard; returns the copy's
    root and the full manifest (write it back to "add" the shard)."""
    root = str(folder / "corpus")
    shutil.copytree(dataset, root)
    full = load_manifest(root)
    splits = dict(full.splits)
    database = splits["database"]
    splits["database"] = database.model_copy(update={
        "shards": database.shards[:-1], "samples": database.samples - database.shards[-1].samples})
    write_manifest(root, DatasetManifest.build(full.name, full.classes, full.tags, splits))
    return root, full


@pytest.mark.slow
def test_nightly_encodes_all_for_a_new_champion_and_only_new_shards_otherwise(
    ray_local: None, tiny_dataset: str, tmp_path: Path
) -> None:
    corpus, full_manifest = _without_last_database_shard(tiny_dataset, tmp_path)
    v1 = _register(tmp_path, corpus, seed=0)
    parts_before = sum(len(shards) for shards in _shards(corpus).values())

    assert _encode(tmp_path, corpus, "--nightly") == 0  # no encode yet: everything
    assert _encode(tmp_path, corpus, "--nightly") == 0  # same champion, same shards: nothing to do
    write_manifest(corpus, full_manifest)  # a new database shard arrives
    assert _encode(tmp_path, corpus, "--nightly") == 0  # same champion: the new shard only
    _check_codes(str(tmp_path / "codes"), 1, corpus, v1)
    v2 = _register(tmp_path, corpus, seed=1)
    assert _encode(tmp_path, corpus, "--nightly") == 0  # champion moved to v2: everything for v2
    _check_codes(str(tmp_path / "codes"), 2, corpus, v2)

    runs = _encode_runs(tmp_path)
    summary = [(r.data.tags["mode"], r.data.tags["model_version"], int(r.data.metrics["parts_written"]),
                int(r.data.metrics["parts_skipped"])) for r in runs]
    assert summary == [
        ("full", "1", parts_before, 0),
        ("incremental", "1", 0, parts_before),
        ("incremental", "1", 1, parts_before),
        ("full", "2", parts_before + 1, 0),
    ]
    assert all(r.data.tags["nightly"] == "true" for r in runs)


@pytest.mark.slow
def test_encode_reads_and_writes_s3(ray_local: None, tiny_dataset: str, tmp_path: Path,
                                    s3_bucket: str) -> None:
    dataset = f"{s3_bucket}/data/builtin-tiny"
    for path in sorted(Path(tiny_dataset).rglob("*")):
        if path.is_file():
            storage.put_file(str(path), storage.join(dataset, str(path.relative_to(tiny_dataset))))
    codes_root = f"{s3_bucket}/codes"
    method = _register(tmp_path, tiny_dataset, seed=0)

    assert _encode(tmp_path, dataset, f"encode.codes_root={codes_root}") == 0

    _check_codes(codes_root, 1, tiny_dataset, method)
    assert not (tmp_path / "codes").exists()
    (run,) = _encode_runs(tmp_path)
    assert run.data.tags["codes_uri"] == f"{codes_root}/{MODEL_NAME}/v1"
    assert _client(tmp_path).get_model_version(MODEL_NAME,
                                               "1").tags["codes_uri"] == f"{codes_root}/{MODEL_NAME}/v1"


def _with_a_corrupt_image(dataset: str, folder: Path, broken_key: str) -> str:
    """A copy of ``dataset`` whose query sample ``broken_key`` has image bytes that do not decode."""
    root = str(folder / "corpus")
    shutil.copytree(dataset, root)
    manifest = load_manifest(root)
    writer = ShardWriter(root, "query", shard_size=manifest.split("query").shards[0].samples)
    for shard in manifest.split("query").shards:
        with storage.open_input(storage.join(dataset, shard.path)) as stream:
            for raw in iter_shard(stream, shard.path):
                members = {ext: data for ext, data in raw.items() if ext != "__key__"}
                if raw["__key__"] == broken_key:
                    members["png"] = members["png"][:40]
                writer.write(raw["__key__"], members)
    splits = {**manifest.splits, "query": writer.close()}
    write_manifest(root, DatasetManifest.build(manifest.name, manifest.classes, manifest.tags, splits))
    return root


@pytest.mark.slow
def test_a_bad_sample_fails_strict_mode_and_is_quarantined_otherwise(
    ray_local: None, tiny_dataset: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    query = load_manifest(tiny_dataset).split("query")
    broken_key = list(iter_split(tiny_dataset, "query"))[-1]["key"]  # in the last query shard
    last_shard = query.shards[-1].path
    corpus = _with_a_corrupt_image(tiny_dataset, tmp_path, broken_key)
    _register(tmp_path, corpus, seed=0)
    query_only = ("encode.splits=[query]", "encode.actors=1")

    assert _encode(tmp_path, corpus, *query_only, "data.strict=true") == 2
    assert f"corrupt_image in {storage.join(corpus, last_shard)} key={broken_key}" in caplog.text
    assert not Path(split_uri(str(tmp_path / "codes"), MODEL_NAME, 1, "query"),
                    part_name(last_shard)).exists()

    assert _encode(tmp_path, corpus, *query_only, "data.max_bad_fraction=0.05") == 0
    codes = load_split(split_uri(str(tmp_path / "codes"), MODEL_NAME, 1, "query"), _shards(corpus)["query"])
    assert len(codes) == query.samples - 1 and broken_key not in codes.index_of()
    run = _encode_runs(tmp_path)[-1]
    assert run.data.metrics["bad_samples"] == 1
    report = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quarantine.json")
    assert [(r["kind"], r["key"]) for r in report["records"]] == [("corrupt_image", broken_key)]


@pytest.fixture(scope="module")
def small_shards_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny dataset in shards of 4 samples (144 query + database parts): many parts to kill between."""
    from hashing.data.ingest import ingest
    from hashing.data.sources import builtin_source

    root = str(tmp_path_factory.mktemp("small-shards") / "builtin-tiny")
    classes, tags, total, records = builtin_source("tiny", seed=0)
    ingest(root, records, name="builtin-tiny", classes=classes, tags=tags, total=total, shard_size=4,
           progress=False)
    return root


def _session_processes(sid: int) -> list[int]:
    """Process ids in session ``sid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the job, its Ray, Ray's workers) and wait for them."""
    deadline = time.monotonic() + 30
    while (pids := _session_processes(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not _session_processes(sid), "processes of the killed encode job survived"


@pytest.mark.slow
def test_a_killed_encode_rerun_writes_only_the_missing_parts(
    ray_local: None, small_shards_dataset: str, tmp_path: Path
) -> None:
    method = _register(tmp_path, small_shards_dataset, seed=0)
    total = sum(len(shards) for shards in _shards(small_shards_dataset).values())
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    # One actor in a new session: the job, its Ray instance and its workers all die together.
    log = tmp_path / "encode.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "pipelines/encode.py", "--config", CONFIG, f"run.root={tmp_path}",
             f"dataset.uri={small_shards_dataset}", "encode.actors=1", "ray.num_cpus=2", "--no-progress"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not _part_files(tmp_path / "codes"):
            assert proc.poll() is None, f"encode exited with {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no part within {KILL_TIMEOUT_S} s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_session(proc.pid)
    survived = len(_part_files(tmp_path / "codes"))
    assert 0 < survived < total, f"the kill came too late: {survived} of {total} parts were written"

    assert _encode(tmp_path, small_shards_dataset) == 0

    _check_codes(str(tmp_path / "codes"), 1, small_shards_dataset, method)
    killed, rerun = _encode_runs(tmp_path)
    assert killed.info.status == "RUNNING" and killed.data.tags["complete"] == "false"
    assert rerun.data.tags["complete"] == "true"
    metrics = rerun.data.metrics
    assert (metrics["parts_written"], metrics["parts_skipped"]) == (total - survived, survived)
