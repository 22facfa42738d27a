"""pipelines/ingest.py: built-in and folder sources, local and S3 outputs, every bad-input case."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import webdataset
from PIL import Image

from hashing import storage
from hashing.data.builtin import PRESETS, builtin_samples
from hashing.data.quarantine import BadInputError, TooManyBadSamplesError
from hashing.data.read import iter_split
from hashing.data.schema import load_manifest
from hashing.data.splits import SPLITS
from hashing.data.tags import TagVocabulary
from pipelines import ingest

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["cat", "coffee", "person"]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Three real photos as 20x20 RGB uint8 (chelsea the cat, coffee, astronaut)."""
    return [np.asarray(Image.fromarray(img).resize((20, 20), Image.BILINEAR))
            for img in (skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut())]


def _save(path: Path, image: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path: Path, photos) -> Path:
    """A folder of real photos in four formats, with classes.txt."""
    root = tmp_path / "photos"
    _save(root / "img/cat.png", photos[0], "PNG")
    _save(root / "img/coffee.jpg", photos[1], "JPEG")
    _save(root / "img/astro.webp", photos[2], "WEBP")
    _save(root / "img/sub/cat2.bmp", photos[0], "BMP")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


GOOD_CSV = [
    "key,image,labels,tags,split",
    "cat_1,img/cat.png,cat,furry;animal,train",
    "coffee_1,img/coffee.jpg,1,drink,",
    ",img/astro.webp,person;0,space;suit,query",
    "cat_2,img/sub/cat2.bmp,0,,database",
]

# One bad row each: (CSV row, expected kind, expected key).
BAD_CSV = [
    ("broken,img/broken.jpg,0,,train", "corrupt_image", "broken"),
    ("gone,img/gone.png,0,,train", "missing_image", "gone"),
    ("range,img/cat.png,3,,train", "label_out_of_range", "range"),
    ("dog,img/cat.png,dog,,train", "unknown_label", "dog"),
    ("val,img/cat.png,0,,validation", "unknown_split", "val"),
    ("cat_1,img/cat.png,0,,query", "duplicate_key", "cat_1"),
    ("escape,../outside.png,0,,train", "bad_path", "escape"),
    ("absolute,/etc/hostname,0,,train", "bad_path", "absolute"),
    ("bad.key,img/cat.png,0,,train", "bad_key", "bad.key"),
]


def _csv(folder: Path, rows: list[str]) -> str:
    (folder / "img/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    _save(folder.parent / "outside.png", np.zeros((4, 4, 3), np.uint8), "PNG")
    path = folder / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _member(root: str, split: str, key: str, ext: str) -> bytes:
    manifest = load_manifest(root)
    for uri in manifest.shard_uris(root, split):
        for s in webdataset.WebDataset(uri, shardshuffle=False):
            if s["__key__"] == key:
                return s[ext]
    raise KeyError(key)


def test_builtin_tiny_round_trip(tiny_dataset: str) -> None:
    manifest = load_manifest(tiny_dataset)
    assert manifest.name == "builtin-tiny" and manifest.tags
    vocab = TagVocabulary(manifest.tags)
    for split in SPLITS:
        expected = list(builtin_samples(split, PRESETS["tiny"][split], 0))
        got = list(iter_split(tiny_dataset, split))
        assert manifest.split(split).samples == len(expected) == len(got)
        for e, g in zip(expected, got, strict=True):
            assert g["key"] == e.key
            image = e.image if e.image.ndim == 3 else np.repeat(e.image[..., None], 3, axis=2)
            np.testing.assert_array_equal(g["image"], image)
            assert np.flatnonzero(g["labels"]).tolist() == sorted(set(e.labels))
            np.testing.assert_array_equal(g["tags"], vocab.bag_of_words(e.tags))
    report = json.loads(Path(tiny_dataset, "quarantine.json").read_text())
    assert report["bad"] == 0 and report["good"] == sum(PRESETS["tiny"][s] for s in SPLITS)


def test_builtin_shards_are_read_by_webdataset(tiny_dataset: str) -> None:
    manifest = load_manifest(tiny_dataset)
    urls = manifest.shard_uris(tiny_dataset, "train")
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(samples) == manifest.split("train").samples
    assert samples[0]["png"].dtype == np.uint8 and samples[0]["png"].shape[2] == 3
    assert set(samples[0]["json"]) == {"labels", "tags"}


def test_builtin_to_s3_matches_local(tiny_dataset: str, s3_bucket: str) -> None:
    root = storage.join(s3_bucket, "datasets/tiny")
    args = ingest.parse_args(["--output", root, "--preset", "tiny", "--shard-size", "32", "--no-progress"])
    result = ingest.run(args)
    local = load_manifest(tiny_dataset)
    assert result.manifest == local  # byte-identical shards, same fingerprint
    assert load_manifest(root) == local
    assert [s["key"] for s in iter_split(root, "query")] == [
        s["key"] for s in iter_split(tiny_dataset, "query")]


def test_s3_endpoint_flag_without_endpoint_variables(tiny_dataset: str, s3_bucket: str, s3_endpoint: str,
                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for var in storage.ENDPOINT_ENV:  # set first so that monkeypatch undoes what the job sets
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert storage.s3_settings().endpoint is None  # without the flag: AWS, not moto
    root = storage.join(s3_bucket, "datasets/tiny")
    args = ["--output", root, "--preset", "tiny", "--shard-size", "32", "--no-progress"]
    assert ingest.main([*args, "--s3-endpoint", s3_endpoint]) == 0
    assert load_manifest(root) == load_manifest(tiny_dataset)
    assert [s["key"] for s in iter_split(root, "query")] == [
        s["key"] for s in iter_split(tiny_dataset, "query")]
    with pytest.raises(SystemExit):
        ingest.parse_args([*args, "--s3-endpoint", "minio:9000"])
    assert "--s3-endpoint: expected the http:// or https:// URL" in capsys.readouterr().err


def test_builtin_fingerprint_depends_on_seed(tmp_path: Path) -> None:
    def fingerprint(seed: int, out: str) -> str:
        args = ingest.parse_args(["--output", str(tmp_path / out), "--seed", str(seed), "--no-progress"])
        return ingest.run(args).manifest.fingerprint

    assert fingerprint(0, "a") == fingerprint(0, "b") != fingerprint(1, "c")


def test_folder_csv_round_trip(folder: Path, photos, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "ds")
    labels = _csv(folder, GOOD_CSV)
    assert ingest.main(["--output", out, "--source", "folder", "--labels", labels, "--no-progress"]) == 0
    manifest = load_manifest(out)
    assert manifest.name == "photos" and manifest.classes == CLASSES
    assert manifest.tags == ["animal", "drink", "furry", "space", "suit"]
    assert {s: i.samples for s, i in manifest.splits.items()} == {"train": 2, "query": 1, "database": 1}
    train = {s["key"]: s for s in iter_split(out, "train")}
    np.testing.assert_array_equal(train["cat_1"]["image"], photos[0])
    assert train["coffee_1"]["labels"].tolist() == [0, 1, 0]
    assert _member(out, "train", "coffee_1", "jpg") == (folder / "img/coffee.jpg").read_bytes()
    (query,) = iter_split(out, "query")
    assert query["key"] == "img_astro_webp" and query["labels"].tolist() == [1, 0, 1]
    assert _member(out, "query", "img_astro_webp", "webp") == (folder / "img/astro.webp").read_bytes()
    png = _member(out, "database", "cat_2", "png")  # BMP re-encoded, pixels kept
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), photos[0])
    summary = capsys.readouterr().out
    assert "total" in summary and "skipped: 0" in summary and manifest.fingerprint in summary


def test_folder_jsonl_with_explicit_classes(folder: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"key": "a", "image": "img/cat.png", "labels": ["cat", 2], "tags": ["x"]}),
             "",
             json.dumps({"image": "img/coffee.jpg", "labels": [1], "split": "query"})]
    (folder / "labels.jsonl").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "ds")
    args = ["--output", out, "--source", "folder", "--labels", str(folder / "labels.jsonl"),
            "--classes", "cat,coffee,person", "--split", "database", "--shard-size", "1", "--no-progress"]
    assert ingest.main(args) == 0
    manifest = load_manifest(out)
    assert {s: i.samples for s, i in manifest.splits.items()} == {"query": 1, "database": 1}
    (a,) = iter_split(out, "database")
    assert a["labels"].tolist() == [1, 0, 1] and manifest.tags == ["x"]


def test_folder_bad_records_are_quarantined(folder: Path, tmp_path: Path, caplog) -> None:
    out = str(tmp_path / "ds")
    labels = _csv(folder, GOOD_CSV + [row for row, _, _ in BAD_CSV])
    args = ["--output", out, "--source", "folder", "--labels", labels, "--max-bad-fraction", "1",
            "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert ingest.main(args) == 0
    report = json.loads(Path(out, "quarantine.json").read_text())
    got = [(r["kind"], r["key"], r["shard"]) for r in report["records"]]
    assert got == [(kind, key, f"labels.csv:{len(GOOD_CSV) + 1 + i}") for i,
                   (_, kind, key) in enumerate(BAD_CSV)]
    assert report["good"] == 4 and report["bad"] == len(BAD_CSV)
    assert load_manifest(out).split("train").samples == 2
    assert "quarantined corrupt_image in labels.csv:6 key=broken" in caplog.text


@pytest.mark.parametrize(("row", "kind", "key"), BAD_CSV, ids=[k for _, _, k in BAD_CSV])
def test_folder_strict_mode_fails_with_line_and_key(folder: Path, tmp_path: Path, caplog, row, kind,
                                                    key) -> None:
    out = str(tmp_path / "ds")
    labels = _csv(folder, GOOD_CSV + [row])
    args = ["--output", out, "--source", "folder", "--labels", labels, "--strict", "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert ingest.main(args) == 2
    assert f"{kind} in labels.csv:{len(GOOD_CSV) + 1} key={key}" in caplog.text
    assert not Path(out, "dataset.json").exists()
    with pytest.raises(BadInputError):
        ingest.run(ingest.parse_args(args))


def test_unreadable_jsonl_line(folder: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"key": "a", "image": "img/cat.png", "labels": [0]}), '{"key": "b", "image": ',
             json.dumps(["not", "an", "object"])]
    (folder / "labels.jsonl").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "ds")
    base = ["--output", out, "--source", "folder", "--labels", str(folder / "labels.jsonl"), "--no-progress"]
    assert ingest.main([*base, "--max-bad-fraction", "0.7"]) == 0
    report = json.loads(Path(out, "quarantine.json").read_text())
    assert [(r["kind"], r["shard"]) for r in report["records"]] == [("bad_json", "labels.jsonl:2"),
                                                                     ("bad_json", "labels.jsonl:3")]
    with pytest.raises(BadInputError, match="bad_json in labels.jsonl:2"):
        ingest.run(ingest.parse_args([*base, "--strict", "--overwrite"]))


def test_max_bad_fraction_fails_the_job(folder: Path, tmp_path: Path, caplog) -> None:
    out = str(tmp_path / "ds")
    labels = _csv(folder, GOOD_CSV + [BAD_CSV[0][0]])  # 1 of 5 bad = 20%
    args = ["--output", out, "--source", "folder", "--labels", labels, "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert ingest.main([*args, "--max-bad-fraction", "0.1"]) == 2
    assert "1 of 5 samples are bad (20.0% > max_bad_fraction 10.0%)" in caplog.text
    assert json.loads(Path(out, "quarantine.json").read_text())["counts"] == {"corrupt_image": 1}
    assert not Path(out, "dataset.json").exists()
    with pytest.raises(TooManyBadSamplesError):
        ingest.run(ingest.parse_args(args))  # default limit 1%
    assert ingest.main([*args, "--max-bad-fraction", "0.2"]) == 0


def test_existing_dataset_needs_overwrite(tmp_path: Path, caplog) -> None:
    out = str(tmp_path / "ds")
    args = ["--output", out, "--preset", "tiny", "--shard-size", "1000", "--no-progress"]
    assert ingest.main(args) == 0
    assert len(load_manifest(out).split("train").shards) == 1
    with caplog.at_level(logging.ERROR):
        assert ingest.main(args) == 2
    assert "--overwrite" in caplog.text
    assert ingest.main([*args, "--overwrite", "--shard-size", "7"]) == 0
    train = load_manifest(out).split("train")
    n = PRESETS["tiny"]["train"]
    assert [s.samples for s in train.shards] == [7] * (n // 7) + ([n % 7] if n % 7 else [])


def test_command_line_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines/ingest.py"), "--output", str(out),
                           "--preset", "tiny", "--shard-size", "64"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "fingerprint" in proc.stdout
    assert (out / "dataset.json").exists()
    bad = subprocess.run([sys.executable, str(REPO / "pipelines/ingest.py"), "--output", str(tmp_path / "x"),
                          "--source", "folder", "--labels", str(tmp_path / "nope.csv"), "--classes", "a"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "nope.csv" in bad.stderr and "Traceback" not in bad.stderr
