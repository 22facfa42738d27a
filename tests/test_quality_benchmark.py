"""Smoke test of ``benchmarks/quality.py``: the script runs end to end on the tiny dataset and prints
the table it promises; its float-feature ranking metrics agree with ``hashing.metrics``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import quality  # the repository root is on sys.path (tests/conftest.py)
from hashing.codes import hamming_distance, pack_bits
from hashing.metrics import retrieval_report


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_smoke_preset_prints_the_table_with_scores_in_unit_range(tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    code = quality.main(["--preset", "smoke", "--bits", "16", "--methods", "dsmhn,itq,float",
                         "--cache-dir", str(tmp_path / "cache"), "--json", str(out_json)])
    assert code == 0
    printed = capsys.readouterr().out
    header, *rows = _table_rows(printed)
    assert header[:6] == ["method", "labels used", "bits", "mAP@1000", "NDCG@100", "P@r<=2"]
    assert [(r[0], r[2]) for r in rows] == [("float", "-"), ("dsmhn", "16"), ("itq", "16")]
    by_method = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    for row in rows:
        scores = [float(v) for v in row[3:9] if v != "-"]
        assert scores and all(0.0 <= v <= 1.0 for v in scores), row
    # DSMHN has the cross-modal columns, the image-only rows do not; float features have no radius.
    cross_modal = ["I->T mAP@1000", "T->I mAP@1000", "T->T mAP@1000"]
    assert header[6:9] == cross_modal
    assert all(by_method["dsmhn"][c] != "-" for c in cross_modal)
    assert all(by_method["itq"][c] == "-" for c in cross_modal) and by_method["float"]["P@r<=2"] == "-"
    assert quality.COLUMN_NOTE in printed  # says the unprefixed columns are I->I
    assert "Targets:" in printed and "skipped: best 64-bit codes" in printed
    saved = json.loads(out_json.read_text())
    assert [r["method"] for r in saved["rows"]] == ["float", "dsmhn", "itq"]
    assert len(list((tmp_path / "cache").glob("tiny-seed0-small_cnn-random-32px.npz"))) == 1


def test_score_codes_pairs_each_column_with_its_query_and_database_modality():
    # Text codes equal to the label bits retrieve perfectly; image codes are noise. So I->I and the
    # columns with one image side are low, T->T is 1: each column reads the right (modality, split).
    rng = np.random.default_rng(0)
    labels = {s: np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)] for s, n in (("query", 30), ("database", 200))}
    text = {s: np.repeat(2 * labels[s] - 1, 4, axis=1) for s in labels}  # float32[n, 16] in {-1, +1}
    image = {s: rng.standard_normal((len(labels[s]), 16)).astype(np.float32) for s in labels}
    codes = {(m, s): c[s] for m, c in (("image", image), ("text", text)) for s in labels}
    features = quality.FeatureSet(
        {s: quality.Split(np.zeros((len(labels[s]), 1), np.float32), labels[s], np.zeros((len(labels[s]), 1)))
         for s in labels}, 1, 0)
    row = quality.score_codes(quality.Trained(codes, [], 0.0), features)
    assert row["t2t"] == pytest.approx(1.0)
    assert max(row[quality.MAP], row["i2t"], row["t2i"]) < 0.6
    image_only = quality.score_codes(quality.Trained({k: v for k, v in codes.items() if k[0] == "image"}, [], 0.0),
                                     features)
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
    got = quality.ranking_report(-hamming_distance(q_codes, db_codes).astype(np.float64),
                                 q_labels, db_labels, topk=50, ndcg_k=30)
    assert got[quality.MAP] == pytest.approx(expected["map@50"], abs=1e-12)
    assert got[quality.NDCG] == pytest.approx(expected["ndcg@30"], abs=1e-12)


def test_target_checks_name_misses_with_their_numbers():
    rows = [{"method": m, "bits": b, quality.MAP: v} for m, b, v in [
        ("float", "-", 0.80), ("idhn", 64, 0.75), ("dpsh", 64, 0.70), ("itq", 64, 0.76),
        ("udmsh", 64, 0.50), ("lsh", 64, 0.40)]]
    checks = quality.target_checks(rows)
    assert "NOT met: idhn beats DPSH and ITQ at 64 bits (0.7500 vs 0.7000, 0.7600)" in checks
    assert "met: udmsh (no labels) beats LSH and ITQ at 64 bits (0.5000 vs 0.4000, 0.7600)" not in checks
    assert any(c.startswith("NOT met: udmsh") for c in checks)
    assert "met: best 64-bit codes (itq, 0.7600) reach 95.0% of the float-feature mAP@1000 (0.8000); " \
           "target 90%" in checks
