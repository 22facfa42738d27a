"""pipelines/search.py: top-k over a model version's code shards by key, image file and text."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hashing.code_shards import load_split
from hashing.codes import hamming_distance, pack_signs
from hashing.data.tags import TagVocabulary
from pipelines.search import main, run_search

K = 20


@pytest.fixture(scope="module")
def idhn(model_registry) -> dict:
    """An IDHN version (alias champion) with code shards, and its database codes read back."""
    model = model_registry.register("idhn", seed=7, alias="champion")
    codes_uri = model_registry.encode(model)
    return {"model": model, "database": load_split(f"{codes_uri}/database"),
            "query": load_split(f"{codes_uri}/query")}


def brute_force(query: np.ndarray, codes: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """The k nearest rows of ``codes`` to one query code, by (distance, row): (rows, distances)."""
    distances = hamming_distance(query[None], codes)[0]
    rows = np.lexsort((np.arange(len(codes)), distances))[:k]
    return rows.tolist(), distances[rows].tolist()


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_key_of_the_searched_split_finds_itself_first_and_matches_brute_force(model_registry, idhn,
                                                                              backend) -> None:
    database = idhn["database"]
    _, first_rows = np.unique(database.codes, axis=0, return_index=True)
    row = int(first_rows.max())  # a late row whose code no earlier row has: first among its ties
    key = str(database.keys[row])
    config = model_registry.config(f"search.k={K}", f"search.backend={backend}")

    result = run_search(config, key=key)

    assert result.model.version == idhn["model"].version  # search.alias defaults to champion
    assert (result.hits[0].key, result.hits[0].distance) == (key, 0)
    rows, distances = brute_force(database.codes[row], database.codes, K)
    assert [h.key for h in result.hits] == [str(database.keys[r]) for r in rows]
    assert [h.distance for h in result.hits] == distances
    assert [h.rank for h in result.hits] == list(range(1, K + 1))


def test_query_key_searches_the_database_and_prints_class_names(model_registry, idhn, capsys) -> None:
    query, database = idhn["query"], idhn["database"]
    key = str(query.keys[3])

    assert main(model_registry.args(f"search.k={K}", "--key", key)) == 0

    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "key", "distance"])
    printed = [line.split(None, 3) for line in lines[header + 1:]]
    rows, distances = brute_force(query.codes[3], database.codes, K)
    assert [p[1] for p in printed] == [str(database.keys[r]) for r in rows]
    assert [int(p[2]) for p in printed] == distances
    classes = model_registry.manifest.classes
    first = rows[0]
    assert printed[0][3] == ", ".join(classes[i] for i in database.labels[first])


def test_faiss_ivf_probing_every_list_gives_the_exact_distances(model_registry, idhn) -> None:
    database = idhn["database"]
    config = model_registry.config(f"search.k={K}", "search.backend=faiss-ivf", "search.nlist=4",
                                   "search.nprobe=4")
    result = run_search(config, key=str(database.keys[10]))
    _, distances = brute_force(database.codes[10], database.codes, K)
    assert [h.distance for h in result.hits] == distances
    index = database.index_of()
    true = hamming_distance(database.codes[10:11], database.codes)[0]
    assert all(true[index[h.key]] == h.distance for h in result.hits)
    # The clustered index was kept next to the codes, and the next search loads it with the same hits.
    stored = list(Path(result.codes_uri, "index").glob("database-ivf4-*.faiss"))
    assert len(stored) == 1
    again = run_search(config, key=str(database.keys[10]))
    assert again.hits == result.hits and stored[0].stat().st_mtime_ns == next(
        Path(result.codes_uri, "index").glob("database-ivf4-*.faiss")).stat().st_mtime_ns


def test_image_file_of_a_database_item_is_encoded_to_its_stored_code(model_registry, idhn, tmp_path) -> None:
    shard = model_registry.manifest.split("database").shards[2]
    with tarfile.open(f"{model_registry.dataset_uri}/{shard.path}") as tar:
        names = tar.getnames()
        image_name = next(n for n in names if n.endswith(".png"))
        key = image_name.removesuffix(".png")
        (tmp_path / "item.png").write_bytes(tar.extractfile(image_name).read())
        labels = json.loads(tar.extractfile(f"{key}.json").read())["labels"]

    database = idhn["database"]
    size = len(database)
    result = run_search(model_registry.config(f"search.k={size}"), image=str(tmp_path / "item.png"))

    found = {h.key: h for h in result.hits}
    assert found[key].distance == 0
    assert found[key].labels == [model_registry.manifest.classes[i] for i in labels]
    # The whole ranking is the one of the item's stored code: the image was encoded to exactly that code.
    rows, distances = brute_force(database.codes[database.index_of()[key]], database.codes, size)
    assert [h.key for h in result.hits] == [str(database.keys[r]) for r in rows]
    assert [h.distance for h in result.hits] == distances


def test_text_on_a_dsmhn_model_ranks_images_by_the_text_code(model_registry) -> None:
    model = model_registry.register("dsmhn", seed=8)
    database = load_split(f"{model_registry.encode(model, splits=('database',))}/database")
    config = model_registry.config("method.name=dsmhn", "method.params.text_hidden=64",
                                   f"search.version={model.version}", f"search.k={K}")

    result = run_search(config, text="Dress, ankle boot bag, sparkly")

    vocabulary = TagVocabulary(model_registry.manifest.tags)
    bag = torch.from_numpy(vocabulary.bag_of_words(["dress", "ankle boot", "bag"])[None])
    with torch.inference_mode():
        code = pack_signs(model_registry.methods[(model.name, model.version)].encode_text(bag))[0]
    rows, distances = brute_force(code, database.codes, K)
    assert [h.key for h in result.hits] == [str(database.keys[r]) for r in rows]
    assert [h.distance for h in result.hits] == distances


def test_text_on_an_image_only_model_and_unknown_inputs_are_clear_errors(model_registry, idhn,
                                                                         caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(model_registry.args("--text", "dress")) == 2
        assert "(idhn) has no text network" in caplog.text
        caplog.clear()
        assert main(model_registry.args("--key", "no-such-key")) == 2
        assert "'no-such-key' is in neither the database nor the query codes" in caplog.text
        caplog.clear()
        assert main(model_registry.args("--image", "/no/such/image.png")) == 2
        assert "/no/such/image.png" in caplog.text


def test_format_json_prints_one_object_for_scripts(model_registry, idhn, capsys) -> None:
    database = idhn["database"]
    _, first_rows = np.unique(database.codes, axis=0, return_index=True)
    key = str(database.keys[int(first_rows.max())])  # no earlier row has its code: it ranks first
    capsys.readouterr()

    assert main(model_registry.args("search.k=3", "--key", key, "--format", "json")) == 0

    out = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    assert out["model"]["version"] == idhn["model"].version and out["model"]["name"] == idhn["model"].name
    assert out["split"] == "database" and out["size"] == len(database) and out["query"] == f"key {key}"
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3]
    assert out["hits"][0] == {"rank": 1, "key": key, "distance": 0, "labels": out["hits"][0]["labels"]}
    assert all(isinstance(label, str) for h in out["hits"] for label in h["labels"])
