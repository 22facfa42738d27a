"""Fixtures of the evaluate / promote / search tests: registered models and their code shards, no Ray.

- ``model_registry`` (module): a ``ModelRegistry`` in a fresh run root with MLflow on a sqlite file in
  it, on the session's ``tiny_dataset``. It registers small random-init models (small CNN, 32 px,
  16 bits) as training does (``hashing.mlflow``), and writes their code shards for the query and
  database splits exactly as ``pipelines/encode.py`` does (``hashing.encoding.ShardEncoder`` per source
  shard, whole-file parts, the version's ``codes_*`` tags), only without Ray.
- ``model_registry_at`` (function): ``model_registry_at(tracking_uri)`` gives one using that MLflow
  (e.g. a tracking server process) in a fresh run root.

MLflow's process-wide state (tracking URI, active experiment) is restored after either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from hashing import storage
from hashing.code_shards import part_uri, split_uri
from hashing.config import Config, load_config
from hashing.data.schema import DatasetManifest, load_manifest
from hashing.encoding import Encoder, ShardEncoder, ShardRef
from hashing.methods import HashingMethod, build_method
from hashing.mlflow import names
from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.names import CHALLENGER
from hashing.mlflow.registry import ResolvedModel, register_model, resolve_model, version_tags
from hashing.mlflow.runs import set_experiment, setup_tracking
from hashing.models import build_backbone

TEST_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "test.yaml"
# DSMHN's text network is 8192 wide by default; a narrow one keeps the test models small.
METHOD_OVERRIDES = {"idhn": [], "dsmhn": ["method.name=dsmhn", "method.params.text_hidden=64"]}


class ModelRegistry:
    """Registered models and code shards in one run root (see the module docstring)."""

    def __init__(self, root: Path, dataset_uri: str, tracking_uri: str | None) -> None:
        self.root = root
        self.dataset_uri = dataset_uri
        self.tracking_uri = tracking_uri
        self.manifest: DatasetManifest = load_manifest(dataset_uri)
        self.methods: dict[tuple[str, int], HashingMethod] = {}

    def args(self, *overrides: str) -> list[str]:
        """Job command-line arguments: ``--config configs/test.yaml`` with this root, dataset and MLflow."""
        base = [f"run.root={self.root}", f"dataset.uri={self.dataset_uri}"]
        if self.tracking_uri is not None:
            base.append(f"tracking.uri={self.tracking_uri}")
        return ["--config", str(TEST_CONFIG), *base, *overrides]

    def config(self, *overrides: str) -> Config:
        """The resolved config of ``args(*overrides)``."""
        return load_config(TEST_CONFIG, self.args(*overrides)[2:])

    def register(self, method: str = "idhn", name: str | None = None, seed: int = 0,
                 alias: str | None = CHALLENGER) -> ResolvedModel:
        """Build ``method`` with random weights (``seed``), log it, register it (as ``name``, default
        ``hashing-{method}-builtin-tiny``) and move ``alias`` to it."""
        config = self.config(*METHOD_OVERRIDES[method])
        setup_tracking(config)
        set_experiment(config, self.manifest.name)
        torch.manual_seed(seed)
        built = build_method(method, backbone=build_backbone("small_cnn"), bits=config.model.bits,
                             num_classes=len(self.manifest.classes),
                             tag_vocab_size=len(self.manifest.tags or []),
                             **config.method.params).eval()
        name = name or names.registered_model_name(method, self.manifest.name)
        with mlflow.start_run():
            model_uri = log_hashing_model(built, config, extra={"dataset": self.manifest.name})
        version = register_model(model_uri, name, alias)
        self.methods[(name, version)] = built
        return resolve_model(name, version=version)

    def encode(self, model: ResolvedModel, splits: tuple[str, ...] = ("query", "database")) -> str:
        """Write the code shards of ``model`` for ``splits`` as ``pipelines/encode.py`` does; return their
        URI."""
        encoder = ShardEncoder(model.uri, None, {}, len(self.manifest.classes), self.manifest.fingerprint,
                               encoder=Encoder(self.methods[(model.name, model.version)], 32, batch_size=64))
        codes_root = str(self.root / "codes")
        for split in splits:
            for shard in self.manifest.split(split).shards:
                ref = ShardRef(split, storage.join(self.dataset_uri, shard.path), shard)
                encoded = encoder.encode_shard(storage.read_bytes(ref.uri), ref)
                root = split_uri(codes_root, model.name, model.version, split)
                storage.write_bytes(part_uri(root, shard.path), encoded.part)
        codes_uri = storage.join(codes_root, model.name, f"v{model.version}")
        client = MlflowClient()
        for key, value in ((names.CODES_URI, codes_uri),
                           (names.CODES_DATASET_FINGERPRINT, self.manifest.fingerprint),
                           (names.CODES_RUN_ID, "written-by-the-test")):
            client.set_model_version_tag(model.name, str(model.version), key, value)
        return codes_uri

    def tags(self, model: ResolvedModel) -> dict[str, str]:
        """The model version's tags now."""
        return version_tags(model)


@contextmanager
def _mlflow_state_restored() -> Iterator[None]:
    """Undo what the jobs set process-wide (tracking URI, active experiment) when the block ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mp.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
        mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        yield


@pytest.fixture(scope="module")
def model_registry(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: str) -> Iterator[ModelRegistry]:
    """A ``ModelRegistry`` with MLflow on a sqlite file in a fresh run root, shared by a test module."""
    with _mlflow_state_restored():
        yield ModelRegistry(tmp_path_factory.mktemp("registry"), tiny_dataset, None)


@pytest.fixture
def model_registry_at(tmp_path: Path, tiny_dataset: str) -> Iterator[Callable[[str], ModelRegistry]]:
    """``model_registry_at(tracking_uri)``: a ``ModelRegistry`` in a fresh run root using that MLflow."""
    with _mlflow_state_restored():
        yield lambda uri: ModelRegistry(tmp_path / "run", tiny_dataset, uri)
