"""Bad input and faults (issue 14): each probe gets one clear error (rc=2) or a quarantine entry, and
nothing is lost. Real files throughout: PNGs written with PIL, tar shards, CSV / JSON Lines labels,
a moto S3 endpoint that is stopped mid-ingest."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import subprocess
import sys
import tarfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from hashing import storage
from hashing.data.quarantine import Quarantine
from hashing.data.read import iter_split
from hashing.data.schema import (
    SCHEMA_VERSION,
    DatasetManifest,
    ShardInfo,
    SplitInfo,
    load_manifest,
    sample_json,
)
from hashing.data.transforms import MAX_IMAGE_PIXELS_ENV, ImageTooLargeError, decode_image
from pipelines import ingest

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["cat", "coffee", "person"]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 50000, height: int = 50000) -> bytes:
    """A real 1x1 PNG whose IHDR header (CRC fixed up) claims ``width`` x ``height`` pixels."""
    data = bytearray(_png(np.zeros((1, 1), np.uint8)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts after signature, length, type
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Real photos (PNG) and classes.txt; labels files are written by each test."""
    root = tmp_path / "photos"
    (root / "img").mkdir(parents=True)
    for name, img in (("cat", skimage.data.chelsea()), ("coffee", skimage.data.coffee()),
                      ("astro", skimage.data.astronaut())):
        Image.fromarray(img).resize((20, 20), Image.BILINEAR).save(root / f"img/{name}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _ingest(out: Path | str, labels: Path, *flags: str) -> int:
    return ingest.main(["--output", str(out), "--source", "folder", "--labels", str(labels), "--no-progress",
                        *flags])


def _report(out: Path) -> list[tuple[str, str, str]]:
    return [(r["kind"], r["key"],
             r["shard"]) for r in json.loads((out / "quarantine.json").read_text())["records"]]


def _shard(path: Path, members: list[tuple[str, bytes]]) -> ShardInfo:
    """A real tar with members named exactly as given; its ``dataset.json`` entry (relative to the root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    return ShardInfo(path=f"{path.parent.name}/{path.name}", samples=len(members) // 2, bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest())


def _dataset(root: Path, members: list[tuple[str, bytes]]) -> None:
    """A dataset at ``root`` whose one train shard holds ``members``."""
    info = _shard(root / "train" / "shard-000000.tar", members)
    manifest = DatasetManifest.build("t", CLASSES, None,
                                     {"train": SplitInfo(samples=info.samples, shards=[info])})
    (root / "dataset.json").write_text(manifest.model_dump_json())


# 1: decompression bomb -------------------------------------------------------------------------------

def test_decompression_bomb_is_quarantined_as_too_large_at_ingest(folder: Path, tmp_path: Path) -> None:
    (folder / "img/bomb.png").write_bytes(bomb_png())
    (folder / "img/big.png").write_bytes(bomb_png(9000, 9000))  # under Pillow's limit, over ours
    (folder / "labels.csv").write_text("key,image,labels\ncat,img/cat.png,0\nbomb,img/bomb.png,1\n"
                                       "big,img/big.png,2\n")
    out = tmp_path / "ds"
    assert _ingest(out, folder / "labels.csv", "--max-bad-fraction", "0.7") == 0
    assert _report(out) == [("too_large", "bomb", "labels.csv:3"), ("too_large", "big", "labels.csv:4")]
    bomb, big = (r["detail"] for r in json.loads((out / "quarantine.json").read_text())["records"])
    assert "bomb.png" in bomb and "2500000000 pixels" in bomb
    assert "big.png: 9000 x 9000 pixels, more than the limit of 67108864" in big


def test_decompression_bomb_inside_a_shard_is_quarantined_when_read(tmp_path: Path) -> None:
    good = _png(np.full((4, 4, 3), 7, np.uint8))
    _dataset(tmp_path, [("a.png", good), ("a.json", sample_json([0], [])),
                        ("bomb.png", bomb_png()), ("bomb.json", sample_json([1], []))])
    quarantine = Quarantine(max_bad_fraction=1.0)
    assert [s["key"] for s in iter_split(str(tmp_path), "train", quarantine=quarantine)] == ["a"]
    (bad,) = quarantine.records
    assert (bad.kind, bad.key, bad.shard) == ("too_large", "bomb", str(tmp_path / "train/shard-000000.tar"))


def test_pixel_limit_is_configurable(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "")  # monkeypatch undoes what --max-image-pixels sets
    (folder / "labels.csv").write_text("key,image,labels\ncat,img/cat.png,0\ncoffee,img/coffee.png,1\n")
    out = tmp_path / "ds"
    assert _ingest(out, folder / "labels.csv", "--max-image-pixels", "399", "--max-bad-fraction", "1") == 0
    assert [k for k, _, _ in _report(out)] == ["too_large", "too_large"]  # 20 x 20 = 400 pixels
    with pytest.raises(ImageTooLargeError, match="more than the limit of 399"):
        decode_image((folder / "img/cat.png").read_bytes(), "cat.png")
    assert decode_image((folder / "img/cat.png").read_bytes(), "cat.png", max_pixels=400).shape == (20, 20, 3)


# 2: a failed --overwrite leaves the old dataset readable --------------------------------------------

def test_failed_overwrite_keeps_the_old_dataset_readable(folder: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "ds"
    assert ingest.main(["--output", str(out), "--preset", "tiny", "--shard-size", "8", "--no-progress"]) == 0
    before = load_manifest(str(out))
    keys = {split: [s["key"] for s in iter_split(str(out), split)] for split in before.splits}
    report = (out / "quarantine.json").read_bytes()
    rows = ["key,image,labels,split"] + [f"c{i},img/cat.png,0,{split}" for i, split in
                                         enumerate(["train", "query",
                                                    "database"])] + ["gone,img/gone.png,0,train"]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")

    with caplog.at_level(logging.ERROR):
        assert _ingest(out, folder / "labels.csv", "--overwrite", "--shard-size", "1") == 2
    assert "1 of 4 samples are bad" in caplog.text and "is unchanged" in caplog.text
    assert load_manifest(str(out)) == before
    assert {split: [s["key"] for s in iter_split(str(out), split)] for split in before.splits} == keys
    assert (out / "quarantine.json").read_bytes() == report

    assert _ingest(out, folder / "labels.csv", "--overwrite", "--max-bad-fraction", "0.5") == 0
    after = load_manifest(str(out))
    assert all(s.path.startswith("g1/") for split in after.splits.values() for s in split.shards)
    assert [s["key"] for s in iter_split(str(out), "train")] == ["c0"]
    assert not list((out / "train").glob("*.tar"))  # the replaced shards are gone after the switch
    assert _report(out) == [("missing_image", "gone", "labels.csv:5")]
    assert _ingest(out, folder / "labels.csv", "--overwrite", "--max-bad-fraction", "0.5") == 0
    assert load_manifest(str(out)).split("train").shards[0].path.startswith("g2/")
    assert not [p for p in (out / "g1").rglob("*") if p.is_file()]


def test_failed_overwrite_on_s3_keeps_the_old_dataset(folder: Path, s3_bucket: str) -> None:
    root = f"{s3_bucket}/ds"
    assert ingest.main(["--output", root, "--preset", "tiny", "--shard-size", "200", "--no-progress"]) == 0
    before = load_manifest(root)
    (folder / "labels.csv").write_text("key,image,labels,split\na,img/cat.png,0,train\n"
                                       "b,img/gone.png,0,query\n")
    assert _ingest(root, folder / "labels.csv", "--overwrite") == 2
    assert load_manifest(root) == before and len(list(iter_split(root, "query"))) == 64
    assert _ingest(root, folder / "labels.csv", "--overwrite", "--max-bad-fraction", "0.5") == 0
    assert [s["key"] for s in iter_split(root, "train")] == ["a"]
    assert [uri.removeprefix(root + "/") for uri in storage.list_files(root)] == [
        "dataset.json", "g1/quarantine.json", "g1/train/shard-000000.tar", "quarantine.json"]


# 3: a label that is neither an index nor a name ------------------------------------------------------

@pytest.mark.parametrize("label", [True, 1.5, {"id": 1}, None])
def test_non_index_label_is_quarantined_as_bad_label_with_line_and_key(folder: Path, tmp_path: Path,
                                                                       label) -> None:
    lines = [{"key": "ok", "image": "img/cat.png", "labels": [0]},
             {"key": "weird", "image": "img/coffee.png", "labels": [label]}]
    (folder / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "ds"
    assert _ingest(out, folder / "labels.jsonl", "--max-bad-fraction", "0.5") == 0
    assert _report(out) == [("bad_label", "weird", "labels.jsonl:2")]
    assert load_manifest(str(out)).split("train").samples == 1


# 6: labels missing from the labels file ---------------------------------------------------------------

@pytest.mark.parametrize("header", ["key,image,tags", "key,image,label,tags"])
def test_csv_without_a_labels_column_is_an_error_naming_the_file(folder: Path, tmp_path: Path, caplog,
                                                                 header: str) -> None:
    (folder / "labels.csv").write_text(f"{header}\ncat,img/cat.png,{'0,' if 'label' in header else ''}x\n")
    out = tmp_path / "ds"
    with caplog.at_level(logging.ERROR):
        assert _ingest(out, folder / "labels.csv") == 2
    assert str(folder / "labels.csv") in caplog.text and "key,image,labels,tags[,split]" in caplog.text
    assert "missing ['labels']" in caplog.text and "--unlabelled" in caplog.text
    assert not (out / "dataset.json").exists()
    if "label" not in header:  # unlabelled data only when asked for
        assert _ingest(out, folder / "labels.csv", "--unlabelled") == 0
        assert load_manifest(str(out)).split("train").samples == 1


def test_jsonl_line_without_labels_is_quarantined_unless_unlabelled(folder: Path, tmp_path: Path) -> None:
    lines = [{"key": "a", "image": "img/cat.png", "labels": [0]},
             {"key": "b", "image": "img/coffee.png", "label": [1]}]
    (folder / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "ds"
    assert _ingest(out, folder / "labels.jsonl", "--max-bad-fraction", "0.5") == 0
    assert _report(out) == [("bad_json", "b", "labels.jsonl:2")]
    assert _ingest(out, folder / "labels.jsonl", "--unlabelled", "--overwrite") == 0
    assert load_manifest(str(out)).split("train").samples == 2


# 7: 16-bit grey PNG -----------------------------------------------------------------------------------

def test_16_bit_grey_png_is_scaled_to_8_bits(folder: Path, tmp_path: Path) -> None:
    grey = (skimage.data.camera()[:32, :32].astype(np.uint16) * 257 + 100).astype(np.uint16)
    Image.fromarray(grey).save(folder / "img/deep.png")
    assert Image.open(folder / "img/deep.png").mode.startswith("I;16")
    expected = np.rint(grey / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_image((folder / "img/deep.png").read_bytes(), "deep.png"),
                                  np.repeat(expected[..., None], 3, axis=2))
    (folder / "labels.csv").write_text("key,image,labels\ndeep,img/deep.png,0\n")
    out = tmp_path / "ds"
    assert _ingest(out, folder / "labels.csv") == 0
    (sample,) = iter_split(str(out), "train")
    np.testing.assert_array_equal(sample["image"][..., 0], expected)
    assert (sample["image"] == 255).mean() < 0.1


# 8: the S3 endpoint dies during ingest -----------------------------------------------------------------

@pytest.fixture
def dying_s3(s3_env: str, services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A moto server of this test only (the session's stays up), with bucket ``dies``; the AWS environment
    points at it and retries are fast. Yields ``{"endpoint", "stop"}``; ``stop()`` kills the server."""
    import boto3

    port = services.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(storage, "RETRY_INITIAL_WAIT_S", 0.01)
    monkeypatch.setattr(storage, "RETRY_MAX_WAIT_S", 0.02)
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "moto.log").read_text()
                time.sleep(0.3)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="dies")
        yield {"endpoint": endpoint, "stop": lambda: services.stop_process_group(proc)}
    finally:
        services.stop_process_group(proc)


def test_s3_endpoint_dying_during_ingest_is_one_message_and_no_dataset_json(
        dying_s3: dict, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    uploads: list[str] = []
    writes: list[str] = []
    put_file, write_bytes = storage.put_file, storage.write_bytes

    def put_then_die(local: str, uri: str) -> None:
        put_file(local, uri)
        uploads.append(uri)
        if len(uploads) == 2:
            dying_s3["stop"]()

    def write(uri: str, data: bytes) -> None:
        write_bytes(uri, data)
        writes.append(uri)

    monkeypatch.setattr(storage, "put_file", put_then_die)
    monkeypatch.setattr(storage, "write_bytes", write)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        rc = ingest.main(["--output", "s3://dies/ds", "--preset", "tiny", "--shard-size", "8",
                          "--no-progress"])
    assert rc == 2 and time.monotonic() - started < 60
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"S3 endpoint {dying_s3['endpoint']} did not answer after 2 attempts" in message
    assert "before that: 2 shards (train/shard-000000.tar, train/shard-000001.tar)" in message
    assert "no dataset.json was written" in message
    assert writes == []  # neither quarantine.json nor dataset.json reached the store


# 9: tar member names and shard paths that leave the dataset ------------------------------------------

def test_tar_members_with_path_keys_are_quarantined_as_bad_key(tmp_path: Path) -> None:
    png, label = _png(np.zeros((4, 4, 3), np.uint8)), sample_json([0], [])
    _dataset(tmp_path, [("../../x.png", png), ("../../x.json", label), ("/tmp/abs.png", png),
                        ("/tmp/abs.json", label), ("fine.png", png), ("fine.json", label)])
    quarantine = Quarantine(max_bad_fraction=1.0)
    assert [s["key"] for s in iter_split(str(tmp_path), "train", quarantine=quarantine)] == ["fine"]
    assert [(r.kind, r.key) for r in quarantine.records] == [("bad_key", "../../x"), ("bad_key", "/tmp/abs")]


@pytest.mark.parametrize("path",
                         ["../outside/evil.tar", "/tmp/evil.tar", "train/../../evil.tar", "train/.tar"])
def test_shard_path_outside_the_root_is_rejected(tmp_path: Path, path: str) -> None:
    (tmp_path / "outside").mkdir()
    info = _shard(tmp_path / "outside" / "evil.tar", [("a.png", _png(np.zeros((2, 2, 3), np.uint8))),
                                                     ("a.json", sample_json([0], []))])
    shard = info.model_dump() | {"path": path}
    splits = {"train": {"samples": 1, "shards": [shard]}}
    content = {"schema_version": SCHEMA_VERSION, "classes": CLASSES, "tags": None,
               "splits": {"train": [[path, 1, info.bytes, info.sha256]]}}
    fingerprint = hashlib.sha256(json.dumps(content, sort_keys=True,
                                            separators=(",", ":")).encode()).hexdigest()
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "name": "t",
                                                   "classes": CLASSES, "tags": None, "splits": splits,
                                                   "fingerprint": fingerprint}))
    with pytest.raises(ValueError, match="must be a relative path inside the dataset root"):
        load_manifest(str(root))


# 10: an empty labels file -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "text"), [("labels.csv", ""), ("labels.csv", "key,image,labels\n"),
                                            ("labels.jsonl", ""), ("labels.jsonl", "\n\n")])
def test_empty_labels_file_is_an_error(folder: Path, tmp_path: Path, caplog, name: str, text: str) -> None:
    (folder / name).write_text(text)
    out = tmp_path / "ds"
    with caplog.at_level(logging.ERROR):
        assert _ingest(out, folder / name) == 2
    assert f"no records in {folder / name}" in caplog.text
    assert not (out / "dataset.json").exists()


# 12: credentials in --output ---------------------------------------------------------------------------

def test_credentials_in_the_output_uri_are_rejected_without_echoing_them(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        ingest.parse_args(["--output", "s3://AKIAEXAMPLE:VERYSECRET@bucket/x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--output: the URI contains credentials" in err
    assert "VERYSECRET" not in err and "AKIAEXAMPLE" not in err


# 13: a labels file that is not UTF-8 --------------------------------------------------------------------

def test_non_utf8_labels_file_is_one_message_naming_the_file(folder: Path, tmp_path: Path, caplog) -> None:
    (folder / "labels.csv").write_bytes("key,image,labels\nchat_é,img/cat.png,0\n".encode("latin-1"))
    out = tmp_path / "ds"
    with caplog.at_level(logging.ERROR):
        assert _ingest(out, folder / "labels.csv") == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert message.startswith(f"{folder / 'labels.csv'}: not UTF-8 text")
    assert "save the labels file as UTF-8" in message
    assert not (out / "dataset.json").exists()


# search: 1 (bomb), 5 (a missing code part), 13 (a folder as --image) -------------------------------

@pytest.fixture(scope="module")
def searchable(model_registry) -> dict:
    """A champion IDHN version with the code shards of the query and database splits."""
    model = model_registry.register("idhn", seed=3, alias="champion")
    return {"model": model, "codes_uri": model_registry.encode(model)}


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_search_image_decompression_bomb_is_one_message(model_registry, searchable, tmp_path: Path,
                                                        caplog) -> None:
    from pipelines.search import main

    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with caplog.at_level(logging.ERROR):
        assert main(model_registry.args("--image", str(tmp_path / "bomb.png"))) == 2
    (message,) = _errors(caplog)
    assert str(tmp_path / "bomb.png") in message and "2500000000 pixels" in message


def test_search_image_folder_is_one_message(model_registry, searchable, tmp_path: Path, caplog) -> None:
    from pipelines.search import main

    with caplog.at_level(logging.ERROR):
        assert main(model_registry.args("--image", str(tmp_path))) == 2
    assert _errors(caplog) == [f"--image {tmp_path}: is a folder; give one image file"]


def test_search_refuses_a_missing_code_part_unless_allow_partial(model_registry, tmp_path: Path, caplog,
                                                                 capsys) -> None:
    from hashing.code_shards import load_split, part_uri
    from pipelines.search import main

    model = model_registry.register("idhn", name="partial-idhn", seed=4, alias="champion")
    codes_uri = model_registry.encode(model)
    shards = model_registry.manifest.split("database").shards
    full = len(load_split(f"{codes_uri}/database"))
    gone = Path(part_uri(f"{codes_uri}/database", shards[1].path))
    gone.unlink()
    key = str(load_split(f"{codes_uri}/query").keys[0])
    args = model_registry.args("search.model=partial-idhn", "search.k=1000", "--key", key)

    with caplog.at_level(logging.WARNING):
        assert main(args) == 2
        (message,) = _errors(caplog)
        assert f"1 of {len(shards)} source shards have no code part ({shards[1].path})" in message
        caplog.clear()
        capsys.readouterr()
        assert main([*args, "--allow-partial"]) == 0
    assert f"searching {len(shards) - 1} of {len(shards)} code parts" in caplog.text
    assert shards[1].path in caplog.text
    assert f"({full - shards[1].samples} items" in capsys.readouterr().out


# 4: a tracking server that is not there ---------------------------------------------------------------

@pytest.mark.timeout(120)
def test_train_with_no_tracking_server_fails_in_seconds_before_ray(tiny_dataset: str, tmp_path: Path,
                                                                   services,
                                                                   caplog, monkeypatch) -> None:
    from hashing.jobs import train

    def no_ray(*args, **kwargs):  # another test of the session may hold a Ray: check the call instead
        raise AssertionError("train started Ray before checking the tracking server")

    monkeypatch.setattr(train, "init_ray", no_ray)
    uri = f"http://127.0.0.1:{services.free_port()}"  # nothing listens there
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        rc = train.main(["--config", str(REPO / "configs/test.yaml"), f"run.root={tmp_path}",
                         f"dataset.uri={tiny_dataset}", f"tracking.uri={uri}"])
    assert rc == 2 and time.monotonic() - started < 15
    (message,) = _errors(caplog)
    assert message.startswith(f"no MLflow tracking server answers at {uri}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("job", ["search", "promote"])
def test_search_and_promote_with_no_tracking_server_fail_in_seconds(model_registry, services, caplog,
                                                                    job: str) -> None:
    import importlib

    uri = f"http://127.0.0.1:{services.free_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert importlib.import_module(f"pipelines.{job}").main(
            model_registry.args(f"tracking.uri={uri}", *(["--key", "x"] if job == "search" else []))) == 2
    assert time.monotonic() - started < 15
    (message,) = _errors(caplog)
    assert message.startswith(f"no MLflow tracking server answers at {uri}") and "start the server" in message


def test_tracking_check_accepts_any_http_answer_and_skips_sqlite(tmp_path: Path) -> None:
    import http.server
    import threading

    from hashing.config import load_config
    from hashing.mlflow.runs import check_tracking_server

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)  # /health: 404
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_server(load_config(None, [f"tracking.uri=http://127.0.0.1:{server.server_port}"]))
    finally:
        server.shutdown()
        server.server_close()
    check_tracking_server(load_config(None, [f"run.root={tmp_path}"]))  # sqlite: nothing to reach
