"""hashing.data.sources: class names, records from a labels file (kept or re-encoded images, defaults,
bad records as BadSamples), the built-in source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashing.data.builtin import PRESETS
from hashing.data.quarantine import BadKind, BadSample
from hashing.data.shards import Record
from hashing.data.sources import builtin_source, folder_source, read_classes
from hashing.data.transforms import decode_image
from hashing.errors import InputError, NotFoundError

CLASSES = ["cat", "coffee", "person"]


def test_read_classes_from_a_list_a_txt_file_or_classes_txt(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    assert read_classes("cat, coffee,person", labels) == CLASSES
    (tmp_path / "mine.txt").write_text("a\n\nb\n")
    assert read_classes(str(tmp_path / "mine.txt"), labels) == ["a", "b"]
    with pytest.raises(NotFoundError, match="classes.txt does not exist"):
        read_classes(None, labels)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    assert read_classes(None, labels) == CLASSES
    with pytest.raises(InputError, match="non-empty and unique"):
        read_classes("cat,cat", labels)


def test_folder_source_keeps_png_re_encodes_bmp_and_reports_bad_records(tmp_path: Path, photos) -> None:
    (tmp_path / "img").mkdir()
    Image.fromarray(photos[0]).save(tmp_path / "img" / "cat.png")
    Image.fromarray(photos[1]).save(tmp_path / "img" / "coffee.bmp")
    labels = tmp_path / "labels.csv"
    labels.write_text("key,image,labels,tags,split\n"
                      "cat_1,img/cat.png,cat;2,furry; animal,query\n"
                      ",img/coffee.bmp,1,,\n"
                      "gone,img/gone.png,0,,\n"
                      "dog,img/cat.png,dog,,\n"
                      "escape,../x.png,0,,\n")
    out = list(folder_source(str(labels), CLASSES, "train"))
    cat, coffee = out[0], out[1]
    assert isinstance(cat, Record) and isinstance(coffee, Record)
    assert (cat.split, cat.key, cat.labels, cat.tags, cat.source) == ("query", "cat_1", [0, 2],
                                                                      ["furry", "animal"], "labels.csv:2")
    assert cat.image == (tmp_path / "img" / "cat.png").read_bytes()  # PNG bytes kept as they are
    assert (coffee.split, coffee.key, coffee.labels) == ("train", "img_coffee_bmp", [1])
    assert coffee.image.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_image(coffee.image, "coffee"), photos[1])
    bad = out[2:]
    assert all(isinstance(b, BadSample) for b in bad)
    assert [(b.kind, b.key, b.shard) for b in bad] == [(BadKind.MISSING_IMAGE, "gone", "labels.csv:4"),
                                                       (BadKind.UNKNOWN_LABEL, "dog", "labels.csv:5"),
                                                       (BadKind.BAD_PATH, "escape", "labels.csv:6")]


def test_folder_source_file_level_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nothing.csv"):
        folder_source(str(tmp_path / "nothing.csv"), CLASSES, "train")  # at once, before any record
    labels = tmp_path / "labels.csv"
    labels.write_text("key,image,label\nk,a.png,0\n")
    with pytest.raises(InputError, match=r"labels.csv: the CSV header .* unknown \['label'\]"):
        list(folder_source(str(labels), CLASSES, "train"))


def test_builtin_source_yields_the_preset_sizes_per_split() -> None:
    classes, tags, total, records = builtin_source("tiny", seed=0)
    counts: dict[str, int] = {}
    for record in records:
        counts[record.split] = counts.get(record.split, 0) + 1
    assert counts == PRESETS["tiny"] and total == sum(PRESETS["tiny"].values())
    assert classes and tags
    with pytest.raises(InputError, match="unknown built-in preset 'huge'"):
        builtin_source("huge", seed=0)
