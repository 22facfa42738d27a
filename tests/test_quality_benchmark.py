"""Smoke test of ``benchmarks/quality.py``: the script runs end to end on the tiny dataset and prints
the table it promises; its float-feature ranking metrics agree with ``hashing.metrics``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import quality  # the repository root is on sys.path (tests/conftest.py)
from hashing.codes import hamming_distance, pack_bits
from hashing.metrics import retrieval_report


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _smoke_args(methods: str, seeds: str, cache_dir, *extra: str) -> list[str]:
    """The command line of a smoke-preset run at 16 bits."""
    return ["--preset", "smoke", "--bits", "16", "--methods", methods, "--seeds", seeds,
            "--cache-dir", str(cache_dir), *extra]


def test_smoke_preset_prints_the_table_with_scores_in_unit_range(tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    code = quality.main(_smoke_args("dsmhn,itq,float", "0,1", tmp_path / "cache", "--json", str(out_json)))
    assert code == 0
    printed = capsys.readouterr().out
    header, *rows = _table_rows(printed)
    assert header[:8] == [
        "method",
        "labels used",
        "bits",
        "chosen on val",
        "val mAP@1000",
        "mAP@1000",
        "NDCG@100",
        "P@r<=2",
    ]
    assert [(r[0], r[2]) for r in rows] == [("float", "-"), ("dsmhn", "16"), ("itq", "16")]
    by_method = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    for row in rows:
        scores = [float(v.split(" ± ")[0]) for v in row[4:12] if v != "-"]
        assert scores and all(0.0 <= v <= 1.0 for v in scores), row
    assert " ± " in by_method["dsmhn"]["mAP@1000"]  # two seeds: mean ± std
    assert by_method["dsmhn"]["chosen on val"].startswith("lr x")  # a grid point chosen on validation
    # DSMHN has the cross-modal columns, the image-only rows do not; float features have no radius.
    cross_modal = ["I->T mAP@1000", "T->I mAP@1000", "T->T mAP@1000"]
    assert header[9:12] == cross_modal
    assert all(by_method["dsmhn"][c] != "-" for c in cross_modal)
    assert all(by_method["itq"][c] == "-" for c in cross_modal) and by_method["float"]["P@r<=2"] == "-"
    assert quality.COLUMN_NOTE in printed  # says the unprefixed columns are I->I
    assert "Targets" in printed and "skipped: best 64-bit codes" in printed
    assert "quantisation ratio" in printed
    saved = json.loads(out_json.read_text())
    assert [r["method"] for r in saved["rows"]] == ["float", "dsmhn", "itq"]
    dsmhn = saved["rows"][1]
    assert dsmhn["grid"] == 4 and dsmhn["seeds"] == 2 and len(dsmhn["per_seed"]) == 2
    assert dsmhn["map@1000"] == pytest.approx(np.mean([r["map@1000"] for r in dsmhn["per_seed"]]))
    assert len(list((tmp_path / "cache").glob("tiny-seed0-small_cnn-random-32px-trunk.npz"))) == 1


def test_validation_is_carved_out_of_train_and_never_touches_query():
    rng = np.random.default_rng(0)

    def split(n: int, offset: int) -> quality.Split:
        ids = np.arange(offset, offset + n, dtype=np.float32)[:, None]
        return quality.Split(ids, np.zeros((n, 2), np.float32), np.zeros((n, 1), np.float32), ids)

    splits = {"train": split(100, 0), "query": split(20, 1000), "database": split(50, 2000)}
    features = quality.carve_validation(splits, 25, 1, 0)
    train, val = features.splits["train"].inputs[:, 0], features.splits["val"].inputs[:, 0]
    assert len(train) == 75 and len(val) == 25
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    assert features.splits["query"] is splits["query"] and features.splits["database"] is splits["database"]
    again = quality.carve_validation(splits, 25, 1, 0)  # fixed: the same rows every run and seed
    np.testing.assert_array_equal(again.splits["val"].inputs, features.splits["val"].inputs)
    with pytest.raises(ValueError, match="validation size"):
        quality.carve_validation(splits, 100, 1, 0)
    del rng


def test_grid_is_lr_times_one_constant_and_chosen_on_validation(monkeypatch):
    points = quality.grid_points("idhn", "small")
    assert points == [
        (1.0, {"theta_scale": 0.5}),
        (1.0, {"theta_scale": 0.125}),
        (3.0, {"theta_scale": 0.5}),
        (3.0, {"theta_scale": 0.125}),
    ]
    assert all(len(quality.grid_points(m, "small")) == 4 for m in quality.DEEP_METHODS)  # same budget
    assert quality.grid_points("idhn", "none") == [(1.0, {})]
    for method, (constant, values) in quality.GRID.items():  # the shipped config's value comes first
        config = quality.load_config(quality.REPO / "configs" / f"{method.split('-')[0]}.yaml")
        assert config.method.params[constant] == values[0], (method, constant)

    # The point with the best validation score is the one trained at every seed; test scores never
    # enter the choice.
    calls = []

    def fake_train(name, bits, features, preset, epochs, seed, lr_factor=1.0, params=None, splits=()):
        calls.append((seed, lr_factor, dict(params or {}), splits))
        return quality.Trained({}, [], 0.0, method=object())

    def fake_score(trained, features, query="query", database="database", continuous=False):
        lr, params = calls[-1][1], calls[-1][2]
        if query == "val":  # validation prefers lr x3, theta 0.125
            return {quality.MAP: 0.9 if (lr, params.get("theta_scale")) == (3.0, 0.125) else 0.1}
        return {quality.MAP: 0.5, "cont": 0.5, "quant": 1.0}

    monkeypatch.setattr(quality, "train_deep_method", fake_train)
    monkeypatch.setattr(quality, "score_codes", fake_score)
    monkeypatch.setattr(quality, "encode_method", lambda *a: {})
    row = quality.run_deep(
        "idhn",
        16,
        None,
        quality.PRESETS_BY_NAME["smoke"],
        1,
        [0, 1, 2],
        "small",
        quality.Tracker(None, "x", {}),
    )
    assert row["chosen"] == "lr x3, theta_scale 0.125" and row["val"] == 0.9
    assert [c[3] for c in calls[:4]] == [("val", "train")] * 4  # the grid is scored on validation only
    assert [(c[0], c[1], c[2]) for c in calls[4:]] == [
        (1, 3.0, {"theta_scale": 0.125}),
        (2, 3.0, {"theta_scale": 0.125}),
    ]
    assert row["seeds"] == 3


def test_score_codes_pairs_each_column_with_its_query_and_database_modality():
    # Text codes equal to the label bits retrieve perfectly; image codes are noise. So I->I and the
    # columns with one image side are low, T->T is 1: each column reads the right (modality, split).
    rng = np.random.default_rng(0)
    labels = {
        s: np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)] for s, n in (("query", 30), ("database", 200))
    }
    text = {s: np.repeat(2 * labels[s] - 1, 4, axis=1) for s in labels}  # float32[n, 16] in {-1, +1}
    image = {s: rng.standard_normal((len(labels[s]), 16)).astype(np.float32) for s in labels}
    codes = {(m, s): c[s] for m, c in (("image", image), ("text", text)) for s in labels}
    features = quality.FeatureSet(
        {
            s: quality.Split(
                np.zeros((len(labels[s]), 1), np.float32),
                labels[s],
                np.zeros((len(labels[s]), 1)),
                np.zeros((len(labels[s]), 1), np.float32),
            )
            for s in labels
        },
        1,
        0,
    )
    row = quality.score_codes(quality.Trained(codes, [], 0.0), features)
    assert row["t2t"] == pytest.approx(1.0)
    assert max(row[quality.MAP], row["i2t"], row["t2i"]) < 0.6
    image_only = quality.score_codes(
        quality.Trained({k: v for k, v in codes.items() if k[0] == "image"}, [], 0.0), features
    )
    assert set(image_only) == {quality.MAP, quality.NDCG, quality.PR}


def test_unknown_method_is_one_error_and_exit_code_2(tmp_path, caplog):
    assert quality.main(["--preset", "smoke", "--methods", "idhn,nope", "--cache-dir", str(tmp_path)]) == 2
    assert "nope" in caplog.text
    assert not any(tmp_path.iterdir())


def test_ranking_report_matches_hashing_metrics_on_hamming_scores():
    rng = np.random.default_rng(3)
    q_codes, db_codes = (pack_bits(rng.integers(0, 2, (n, 16), dtype=np.uint8)) for n in (20, 300))
    q_labels, db_labels = ((rng.random((n, 5)) < 0.3).astype(np.uint8) for n in (20, 300))
    expected = retrieval_report(q_codes, db_codes, q_labels, db_labels, topk=50, ndcg_k=30)
    got = quality.ranking_report(
        -hamming_distance(q_codes, db_codes).astype(np.float64), q_labels, db_labels, topk=50, ndcg_k=30
    )
    assert got[quality.MAP] == pytest.approx(expected["map@50"], abs=1e-12)
    assert got[quality.NDCG] == pytest.approx(expected["ndcg@30"], abs=1e-12)


def test_target_checks_call_a_difference_only_when_it_exceeds_both_stds():
    def row(method, bits, mean, std, seeds=3, **extra):
        return {
            "method": method,
            "bits": bits,
            quality.MAP: mean,
            f"{quality.MAP}_std": std,
            "seeds": seeds,
            **extra,
        }

    rows = [
        row("float", "-", 0.80, 0.0, seeds=1),
        row("idhn", 64, 0.78, 0.005, cont=0.79, quant=0.78 / 0.79),
        row("dpsh", 64, 0.70, 0.01),
        row("itq", 64, 0.776, 0.01),
        row("udmsh", 64, 0.80, 0.002, cont=0.85, quant=0.80 / 0.85),
        row("schn", 64, 0.60, 0.01),
        row("dsmhn", 64, 0.705, 0.01),
    ]
    checks = quality.target_checks(rows)
    assert "met: idhn >= DPSH at 64 bits (0.7800 vs 0.7000)" in checks  # 0.08 > both stds
    assert "met on the means, not separable: idhn > ITQ at 64 bits (0.7800 vs 0.7760)" in checks
    assert "NOT met: schn >= DPSH at 64 bits (0.6000 vs 0.7000)" in checks  # called against
    assert "met (no called difference): dsmhn >= DPSH at 64 bits (0.7050 vs 0.7000)" in checks
    # 0.024 over ITQ, but 0.004 past the 0.02 margin is within ITQ's std 0.01: not called
    assert (
        "met on the means, not separable: udmsh (no labels) > ITQ + 0.02 at 64 bits (0.8000 vs 0.7760)"
        in checks
    )
    assert "met: best 64-bit codes (udmsh, 0.8000) >= the float-feature mAP@1000 (0.8000)" in checks
    assert any(c.startswith("NOT met: udmsh 64 bits quantisation ratio 0.941") for c in checks)
    assert any(c.startswith("met: idhn 64 bits quantisation ratio 0.987") for c in checks)
    one_seed = quality.target_checks(
        [
            row("idhn", 32, 0.9, 0.0, seeds=1),
            row("dpsh", 32, 0.5, 0.0, seeds=1),
            row("itq", 32, 0.4, 0.0, seeds=1),
        ]
    )
    assert (
        "met on the means, not separable (one seed): idhn >= DPSH at 32 bits (0.9000 vs 0.5000)" in one_seed
    )


def test_grid_and_seed_runs_are_mlflow_child_runs(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        quality.main(_smoke_args("idhn", "0,1", tmp_path / "cache", "--mlflow", uri))
        == 0
    )
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    stages = sorted(r.data.params["stage"] for r in children)
    assert stages == ["final", "final", "grid", "grid", "grid", "grid"]
    assert all("val_map_at_1000" in r.data.metrics for r in children if r.data.params["stage"] == "grid")
    assert all("map_at_1000" in r.data.metrics for r in children if r.data.params["stage"] == "final")


def test_override_flag_reaches_one_methods_config_and_bad_items_are_exit_code_2(
    tmp_path, monkeypatch, caplog
):
    assert quality.parse_overrides(
        ["idhn:method.params.theta_scale=null", "idhn:train.lr=0.01", "udmsh:model.spatial_grid=1"]
    ) == {"idhn": ["method.params.theta_scale=null", "train.lr=0.01"], "udmsh": ["model.spatial_grid=1"]}
    for bad in ("itq:train.lr=1", "idhn-train.lr=1", "idhn:train.lr"):
        with pytest.raises(ValueError, match="METHOD:key=value"):
            quality.parse_overrides([bad])
    assert (
        quality.main(
            ["--preset", "smoke", "--methods", "idhn", "--override", "nope:x=1", "--cache-dir", str(tmp_path)]
        )
        == 2
    )
    seen = []
    real = quality.load_config
    monkeypatch.setattr(
        quality, "load_config", lambda path, overrides: seen.append(overrides) or real(path, overrides)
    )
    assert (
        quality.main(_smoke_args("idhn", "0", tmp_path, "--grid", "none",
                                 "--override", "idhn:method.params.theta_scale=null"))
        == 0
    )
    assert seen and all(o == ["model.bits=16", "method.params.theta_scale=null"] for o in seen)


def test_frozen_mode_repools_the_cached_spatial_grid_for_a_grid_1_config():
    import torch

    from hashing.models import build_backbone

    backbone = build_backbone("small_cnn", pretrained=False, spatial_grid=2).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        grid2 = backbone(images)
        grid1 = backbone.set_spatial_grid(1)(images)
    rows = torch.cat([grid2.global_, grid2.spatial], 1)
    regridded = quality.RegriddedFeatures(128, 256, 1)
    with pytest.raises(ValueError, match="spatial_grid 4 cannot be pooled from the cached 2x2 grid"):
        quality.RegriddedFeatures(128, 256, 4)
    assert regridded.spatial_dim == 64
    out = regridded(rows)
    torch.testing.assert_close(out.spatial, grid1.spatial, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.global_, grid2.global_)


def test_cached_stage_rows_reproduce_the_backbone_and_only_the_last_stage_and_head_train():
    from benchmarks.cached_features import CachedStage
    from hashing.models import build_backbone

    images = torch.randn(2, 3, 64, 64)
    for grid in (1, 2):
        torch.manual_seed(0)
        backbone = build_backbone("efficientnet_lite0", pretrained=False, spatial_grid=grid).eval()
        with torch.no_grad():
            expected = backbone(images)
            staged = CachedStage(backbone, 15, 64, cached_grid=2)
            out = staged(staged.cache_rows(images))
        torch.testing.assert_close(out.global_, expected.global_, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.spatial, expected.spatial, rtol=1e-5, atol=1e-5)
        assert out.spatial.shape == (2, 112 * grid * grid)
    trained = {name for name, p in staged.named_parameters() if p.requires_grad}
    assert trained and all(
        name.startswith(("inner._blocks.15.", "inner._conv_head.", "inner._bn1.")) for name in trained
    )
    assert any(name.startswith("inner._blocks.15.") for name in trained)
    # 64 px: block 14 outputs 192 x 2 x 2, the 112-channel map is cached on a 2 x 2 grid
    assert staged.row_width == 192 * 4 + 112 * 4
    with pytest.raises(ValueError, match="cached rows float\\[b, 1216\\]"):
        staged(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="after the spatial block"):
        CachedStage(backbone, 10, 64, cached_grid=2)


@pytest.mark.parametrize("mode", ["images", "frozen", "stage"])
def test_whole_backbone_frozen_and_stage_modes_run_end_to_end(mode, tmp_path, monkeypatch, capsys):
    # The gpu preset's mode (the whole backbone trains on images), the frozen mode and the cpu
    # preset's stage mode (on a random EfficientNet-Lite0 at 32 px), at smoke size on the CPU.
    from dataclasses import replace

    preset = replace(quality.PRESETS_BY_NAME["smoke"], mode=mode, epochs=1, trained=f"smoke {mode}")
    if mode == "stage":
        preset = replace(preset, backbone="efficientnet_lite0", stage_start=15)
    monkeypatch.setitem(quality.PRESETS_BY_NAME, "smoke", preset)
    out_json = tmp_path / "rows.json"
    assert (
        quality.main(_smoke_args("udmsh,itq", "0", tmp_path, "--grid", "none", "--json", str(out_json)))
        == 0
    )
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["method"] for r in rows] == ["udmsh", "itq"]
    assert all(0.0 <= r["map@1000"] <= 1.0 for r in rows)
    cached = f"tiny-seed0-efficientnet_lite0-random-32px-{mode}15" if mode == "stage" else (
        f"tiny-seed0-small_cnn-random-32px-{mode}"
    )
    assert len(list(tmp_path.glob(f"{cached}.npz"))) == 1
    assert f"trained: smoke {mode}" in capsys.readouterr().out


def test_schn_b_row_learns_b_between_epochs_and_scores_the_query_against_the_training_rows(
    tmp_path, monkeypatch, capsys
):
    from hashing.methods.schn import SCHN

    updates = []  # (row indices of the update's batches, B before the update) per update_codes call
    update = SCHN.update_codes

    def spy(self, batches):
        batches = list(batches)
        updates.append((torch.cat([b["index"] for b in batches]).tolist(), self.train_codes.clone()))
        return update(self, batches)

    monkeypatch.setattr(SCHN, "update_codes", spy)
    out_json = tmp_path / "rows.json"
    code = quality.main(_smoke_args("schn,schn-b", "0", tmp_path, "--grid", "none", "--json", str(out_json)))
    assert code == 0
    printed = capsys.readouterr().out
    header, *rows = _table_rows(printed)
    assert header[-2:] == ["db = train (learned B) mAP@1000", "db = train (encoded) mAP@1000"]
    assert quality.TRAIN_DATABASE_NOTE in printed
    by_method = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_method["schn"]["db = train (learned B) mAP@1000"] == "-"  # plain schn keeps no B
    saved = {r["method"]: r for r in json.loads(out_json.read_text())["rows"]}
    assert 0.0 <= saved["schn"]["train_enc"] <= 1.0 and "train_b" not in saved["schn"]
    assert all(0.0 <= saved["schn-b"][k] <= 1.0 for k in ("train_b", "train_enc", quality.MAP))
    # One schn-b training (2 epochs): B updated before the first epoch and after each, every time
    # over all 192 training rows in order; plain schn never updates.
    n_train = 192
    assert len(updates) == 3
    assert all(index == list(range(n_train)) for index, _ in updates)
    assert not updates[0][1].any() and updates[1][1].abs().min() == 1  # zeros, then binary codes


def test_score_train_database_reads_the_learned_codes_and_the_encoded_train_rows():
    # Learned B equal to the label bits retrieves perfectly; the encoded train rows are noise.
    rng = np.random.default_rng(0)
    labels = {
        s: np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)] for s, n in (("query", 30), ("train", 200))
    }
    codes = {("image", s): np.repeat(2 * labels[s] - 1, 4, axis=1) for s in labels}
    noise = rng.standard_normal((200, 16)).astype(np.float32)
    features = quality.FeatureSet(
        {
            s: quality.Split(np.zeros((len(y), 1)), y, np.zeros((len(y), 1)), np.zeros((len(y), 1)))
            for s, y in labels.items()
        },
        1,
        0,
    )
    learned = quality.Trained(
        {**codes, ("image", "train"): noise}, [], 0.0, train_codes=codes["image", "train"]
    )
    row = quality.score_train_database(learned, features)
    assert row["train_b"] == pytest.approx(1.0) and row["train_enc"] < 0.6
    encoded_only = quality.score_train_database(quality.Trained(codes, [], 0.0), features)
    assert encoded_only == {"train_enc": pytest.approx(1.0)}
    assert "schn-b" in quality.DEEP_METHODS and "schn-b" not in quality.DEFAULT_METHODS  # opt-in
