"""benchmarks/: each speed benchmark on tiny sizes prints its table, and ours equals the reference.

Timings are never asserted (benchmarks measure, tests check). The Ray halves of the encode and
training benchmarks call ``pipelines/encode.py`` / ``pipelines/train.py``, tested in tests/pipelines;
here their plain, in-process halves run on the tiny dataset.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from benchmarks import common, encode_throughput, evaluation, pseudo_similarity, quality, search, training
from hashing import storage
from hashing.code_shards import load_split, part_uri
from hashing.encoding import Encoder, ShardEncoder

TEST_CONFIG = str(Path(__file__).resolve().parents[1] / "configs/test.yaml")


def test_evaluation_implementations_agree_and_the_table_has_every_row(capsys: pytest.CaptureFixture) -> None:
    rows = evaluation.run(queries=40, database=500, bits=16, classes=5, topk=100, repeats=1, seed=3)
    assert [r["implementation"] for r in rows] == [
        evaluation.CLASSIC, evaluation.PACKED_LOOP, evaluation.OURS, evaluation.OURS_REPORT]
    assert 0.0 < rows[0]["value"] < 1.0
    assert all(r["abs_diff"] <= 1e-9 for r in rows)

    assert evaluation.main(["--queries", "20", "--database", "300", "--topk", "50", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in (evaluation.CLASSIC, evaluation.OURS, evaluation.OURS_REPORT))
    assert "same value (1e-9): yes" in out


def test_evaluation_classic_loop_counts_the_last_of_k_ranks() -> None:
    # One query, database of 3 at distances 0, 1, 2; only the last is relevant: AP@3 = 1/3, AP@2 = 0.
    q_codes = np.zeros((1, 1), np.uint8)
    db_codes = np.array([[0b00000000], [0b00000001], [0b00000011]], np.uint8)
    q_labels = np.array([[1, 0]], np.uint8)
    db_labels = np.array([[0, 1], [0, 1], [1, 0]], np.uint8)
    assert evaluation.classic_map(q_codes, db_codes, q_labels, db_labels, 3) == pytest.approx(1 / 3)
    assert evaluation.classic_map(q_codes, db_codes, q_labels, db_labels, 2) == 0.0
    assert evaluation.packed_loop_map(q_codes, db_codes, q_labels, db_labels, 3) == pytest.approx(1 / 3)


def test_search_faiss_returns_our_results_on_random_and_builtin_codes(capsys: pytest.CaptureFixture) -> None:
    rows = search.compare("random", *search.random_case(3000, 12, 32, seed=1), k=25, repeats=1)
    assert rows[0]["implementation"] == search.OURS
    assert any(r["implementation"] == "faiss IndexBinaryFlat (1 thread)" for r in rows)
    assert all(r["same_ids"] and r["same_distances"] for r in rows)

    queries, database = search.builtin_case("tiny", seed=0)
    assert queries.shape == (64, 8) and database.shape == (512, 8)

    assert (
        search.main(["--n", "2000", "--queries", "5", "--k", "10", "--builtin", "tiny", "--repeats", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "built-in tiny" in out and "random 64-bit" in out
    assert "results identical to ours (ids, distances, tie order): yes" in out


def test_search_rejects_bad_sizes() -> None:
    assert search.main(["--n", "0"]) == 2
    assert search.main(["--bits", "12"]) == 2


@pytest.fixture
def _restore_mlflow_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encode benchmark points this process's MLflow at its own database: undo that after the test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)


@pytest.mark.usefixtures("_restore_mlflow_globals")
def test_encode_plain_loop_and_shard_encoder_encode_the_same_images(tmp_path) -> None:
    config, manifest = encode_throughput.prepare(tmp_path, TEST_CONFIG, "tiny", ["dataset.shard_size=128"])
    refs = encode_throughput.shard_refs(config, manifest)
    assert {r.split for r in refs} == set(config.encode.splits)
    model_uri = f"models:/{config.encode.model}/{config.encode.version}"
    encoder = Encoder.from_model_uri(model_uri, None, batch_size=50)

    plain = encode_throughput.plain_loop(encoder, refs, len(manifest.classes))
    expected = sum(manifest.split(s).samples for s in config.encode.splits)
    assert plain["images"] == len(plain["codes"]) == expected
    assert plain["seconds"] >= plain["decode_s"] + plain["forward_s"] > 0

    shard = encode_throughput.shard_encoder_loop(encoder, refs, config, manifest, model_uri)
    assert shard["images"] == expected
    # The job's per-shard function writes the plain loop's codes.
    shard_encoder = ShardEncoder(
        model_uri, None, {}, len(manifest.classes), manifest.fingerprint, encoder=encoder
    )
    for ref in refs:
        part = shard_encoder.encode_shard(storage.read_bytes(ref.uri), ref).part
        storage.write_bytes(part_uri(str(tmp_path / "codes" / ref.split), ref.info.path), part)
    written = {}
    for split in config.encode.splits:
        codes = load_split(str(tmp_path / "codes" / split))
        written.update((k, c.tobytes()) for k, c in zip(codes.keys, codes.codes, strict=True))
    assert written == plain["codes"]


def test_training_plain_run_records_every_step(tmp_path) -> None:
    config, manifest = common.builtin_config(
        tmp_path, TEST_CONFIG, "tiny", ["train.epochs=2", "train.batch_size=32"]
    )
    run = training.plain_run(config, manifest)
    steps_per_epoch = manifest.split("train").samples // 32
    assert len(run["steps"]) == 2 * steps_per_epoch
    starts = [s for s, _ in run["steps"]]
    assert starts == sorted(starts) and all(end >= start for start, end in run["steps"])

    row = training.summarise("plain", run)
    assert row["samples"] == 2 * steps_per_epoch * 32
    assert 0 <= row["first_step_s"] < row["total_s"]
    assert row["steady_samples_per_s"] >= row["total_samples_per_s"] > 0

    in_memory = training.plain_run(config, manifest, in_memory=True)
    assert len(in_memory["steps"]) == len(run["steps"])


@pytest.mark.slow
def test_training_ray_run_times_the_jobs_trainer_with_its_own_loop(tmp_path) -> None:
    """The Ray Train row runs the job's own ``run_trainer`` with the benchmark's timed loop."""
    config, manifest = common.builtin_config(
        tmp_path, TEST_CONFIG, "tiny", ["train.epochs=1", "train.batch_size=32", "ray.num_cpus=2",
                                        f"train.storage_path={tmp_path / 'train'}"]
    )
    run = training.ray_run(config, manifest, workers=1)
    assert len(run["steps"]) == manifest.split("train").samples // 32
    assert training.summarise("ray 1 worker", run)["steady_samples_per_s"] > 0


def test_training_rejects_bad_worker_counts() -> None:
    assert training.main(["--workers", "0"]) == 2
    assert training.main(["--workers", "one"]) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("_restore_mlflow_globals", "ray_local")
def test_serve_load_test_answers_every_request_and_prints_its_table(tmp_path, capsys) -> None:
    from benchmarks import serve as serve_benchmark

    args = ["--sizes", "3000", "--clients", "1,3", "--requests", "40", "--k", "5", "--shard-size", "1000",
            "--workdir", str(tmp_path)]
    assert serve_benchmark.main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 3000 |")]
    assert [(r[2], r[3], r[7]) for r in rows] == [("1", "40", "0"), ("3", "40", "0")]  # clients, sent, errors
    assert all(float(r[4]) > 0 for r in rows)

    written = load_split(str(tmp_path / "codes" / "clustered-3000-seed0" / "database"))
    assert len(written) == 3000 and len(written.parts) == 3 and written.bits == 64
    assert list(written.keys[:2]) == [serve_benchmark.key_of(0), serve_benchmark.key_of(1)]


def test_serve_load_test_rejects_bad_arguments() -> None:
    from benchmarks import serve as serve_benchmark

    assert serve_benchmark.main(["--sizes", "0"]) == 2
    assert serve_benchmark.main(["--clients", "two"]) == 2
    assert serve_benchmark.main(["--sizes", "1000", "--shard-size", "1000", "--partitions", "2"]) == 2


def test_pseudo_similarity_scores_the_cosine_ranking_of_each_level_on_validation(tmp_path, capsys) -> None:
    args = ["--preset", "smoke", "--datasets", "tiny", "--image-size", "32", "--cache-dir", str(tmp_path)]
    assert pseudo_similarity.main(args) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny |"))
    scores = [float(x) for x in row.strip("| ").split(" | ")[1:]]
    assert len(scores) == 3 and all(0.0 < x <= 1.0 for x in scores)

    # omega 1 is the plain cosine ranking of the global features, omega 0 of the spatial ones
    from dataclasses import replace

    preset = replace(quality.PRESETS_BY_NAME["smoke"], mode="frozen", image_size=32)
    features = quality.load_or_compute_features(preset, 0, tmp_path)
    val, train, width = features.splits["val"], features.splits["train"], features.global_dim

    def cosine_map(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        return quality.ranking_report(a @ b.T, val.labels, train.labels)[quality.MAP]

    got = pseudo_similarity.omega_scores(features, [1.0, 0.0])
    assert got[1.0] == pytest.approx(cosine_map(val.inputs[:, :width], train.inputs[:, :width]), abs=1e-6)
    assert got[0.0] == pytest.approx(cosine_map(val.inputs[:, width:], train.inputs[:, width:]), abs=1e-6)
    assert scores[0] == pytest.approx(got[1.0], abs=1e-4) and scores[2] == pytest.approx(got[0.0], abs=1e-4)

    with pytest.raises(SystemExit) as exit_info:
        pseudo_similarity.main(["--omegas", "1.5"])
    assert exit_info.value.code == 2
