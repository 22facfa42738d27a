"""The typed run configuration: one pydantic schema, YAML files with ``include:``, ``key=value`` overrides.

A config is a YAML mapping of sections (``run``, ``ray``, ``storage``, ``dataset``, ``data``, ``model``,
``method``, ``train``, ``tracking``, ``encode``, ``evaluate``, ``promote``, ``search``, ``ingest``). Every
section forbids unknown keys; ``method.params`` is checked against the method class constructor, so a typo
names the keys the method accepts. A file may ``include:`` other YAML files (paths relative to itself);
they are merged in order (nested mappings merge, other values replace), then the file's own keys,
then the overrides. Local paths are made absolute at load time, so every process (driver, Ray
workers) sees the same folders.

Secrets never belong here: S3 keys and tracking tokens come from the environment
(``AWS_*``, ``MLFLOW_TRACKING_*``); a URI with ``user:password@`` in it is rejected.

This module is the schema (sections, validation, error messages). Reading YAML files with ``include:``
and ``key=value`` overrides is ``hashing.config_loader``; the jobs' argparse glue is ``hashing.cli_args``.
Their public names (``load_config``, ``apply_override``, ``config_parser``, ``config_from_args``,
``parse_cli``) can still be imported from here.
"""

from __future__ import annotations

import inspect
import os
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hashing.data.splits import Split
from hashing.errors import UserError
from hashing.mlflow.names import CHALLENGER, CHAMPION

# Constructor arguments the jobs fill from the dataset and the model section, not from method.params.
_FIXED_METHOD_ARGS = frozenset({"self", "backbone", "bits", "num_classes", "tag_vocab_size"})
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_CREDENTIALS_IN_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*:[^/@\s]*@")


class ConfigError(UserError, ValueError):
    """A config that cannot be loaded or validated. ``errors`` holds one line per bad key."""

    def __init__(self, errors: Sequence[str], source: str = "config") -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid {source}:\n{lines}")


def _config_error(message: str) -> PydanticCustomError:
    """An error whose message already names its key(s); printed as is."""
    return PydanticCustomError("config", "{message}", {"message": message})


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme (``s3://bucket/prefix``, ``file://...``), False for local paths."""
    return "://" in uri


def _absolute(path: str | None) -> str | None:
    if path is None or is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def has_credentials(uri: str) -> bool:
    """True for URIs with ``user:password@`` in them (``s3://KEY:SECRET@bucket/x``)."""
    return bool(_CREDENTIALS_IN_URI.match(uri))


def _no_credentials(uri: str | None, key: str) -> str | None:
    if uri is not None and has_credentials(uri):
        raise _config_error(
            f"{key}: the URI contains credentials (user:password@); give them through the environment "
            "(AWS_* variables, MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), never in a config"
        )
    return uri


def check_s3_endpoint(url: str | None, key: str = "storage.s3_endpoint") -> str | None:
    """``url`` if it is an ``http(s)://host[:port]`` URL with no credentials, path, query or fragment.

    Raises ValueError naming ``key`` (a config key, or a command-line flag) otherwise.
    """
    if url is None:
        return None
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(
            f"{key}: the URL contains credentials (user@); give them through the environment "
            "(AWS_* variables) instead"
        )
    try:
        port = parts.port
    except ValueError:  # not a number in 0..65535
        port = -1
    if (
        parts.scheme not in ("http", "https") or not parts.hostname or port == -1
        or parts.path not in ("", "/") or parts.query or parts.fragment
    ):
        raise ValueError(
            f"{key}: expected the http:// or https:// URL of an S3-compatible endpoint without a path, "
            f"like http://127.0.0.1:9000, got {url!r}"
        )
    return url


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class RunSection(_Section):
    """Where local outputs go and how a run is named."""

    name: str | None = Field(None, description="MLflow run name; None: the job picks one")
    root: str = Field("runs", description="local folder for datasets, checkpoints, codes, mlflow.db")
    seed: int = Field(0, ge=0, description="seed for model init and shuffling")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        if is_remote(v):
            raise ValueError(
                f"run.root is a local folder, got the URI {v!r}; "
                "put S3 URIs in dataset.uri / encode.codes_root / train.storage_path"
            )
        return _absolute(v)


class RaySection(_Section):
    """How jobs reach Ray."""

    address: str | None = Field(None, description="cluster address; None: RAY_ADDRESS or a local ray.init()")
    num_cpus: int | None = Field(
        None, gt=0, description="logical CPUs of a local ray.init(); None: all cores"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return _no_credentials(v, "ray.address")


class StorageSection(_Section):
    """Where ``s3://`` URIs go (credentials never: they come from the environment / AWS config chain)."""

    s3_endpoint: str | None = Field(
        None,
        description="S3-compatible endpoint URL (MinIO, Ceph, moto); None: AWS_ENDPOINT_URL_S3 / "
        "AWS_ENDPOINT_URL, else AWS",
    )

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        v = _no_credentials(v, "storage.s3_endpoint")
        try:
            return check_s3_endpoint(v)
        except ValueError as exc:
            raise _config_error(str(exc)) from None


class DatasetSection(_Section):
    """The dataset contract root (read by train/encode) and, for ``ingest``, where samples come from."""

    uri: str | None = Field(
        None, description="local folder or s3://bucket/prefix; None: {run.root}/data/builtin-{builtin}"
    )
    builtin: str | None = Field("tiny", description="built-in Fashion-MNIST mosaic preset; None: own data")
    seed: int = Field(0, ge=0, description="seed of the built-in dataset (fixes its fingerprint)")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="ingest: name in dataset.json (in MLflow names); None: builtin-{preset} / folder name",
    )
    shard_size: int = Field(1000, gt=0, description="ingest: samples per WebDataset shard")
    image_size: int = Field(64, ge=8, le=1024, description="model input side S in pixels (images -> SxS)")

    @field_validator("builtin")
    @classmethod
    def _preset(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from hashing.data.builtin import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown built-in preset {v!r}; allowed: {', '.join(sorted(PRESETS))} or null")
        return v

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return _absolute(_no_credentials(v, "dataset.uri"))

    @model_validator(mode="after")
    def _own_data_needs_uri(self) -> DatasetSection:
        if self.builtin is None and self.uri is None:
            raise _config_error(
                "dataset.uri: required when dataset.builtin is null "
                "(the folder or s3:// URI of an ingested dataset)"
            )
        return self


class DataSection(_Section):
    """What happens to bad samples (corrupt image, bad label JSON, duplicate key, truncated tar)."""

    strict: bool = Field(False, description="fail on the first bad sample instead of quarantining it")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="fail when more samples are bad")


class ModelSection(_Section):
    """The image backbone and the code length."""

    backbone: Literal["small_cnn", "efficientnet_lite0", "mobilenet_v2"] = "efficientnet_lite0"
    pretrained: bool | None = Field(None, description="ImageNet weights; None: where the backbone has them")
    bits: int = Field(48, ge=8, le=1024, multiple_of=8, description="code length K")
    spatial_grid: int = Field(
        2, ge=1, le=8,
        description="Features.spatial = the earlier stage's map average-pooled to a GxG grid (layout kept; "
        "1: one global mean); only UDMSH reads it",
    )

    @model_validator(mode="after")
    def _weights(self) -> ModelSection:
        has_weights = self.backbone != "small_cnn"
        if self.pretrained is None:
            self.pretrained = has_weights
        elif self.pretrained and not has_weights:
            raise _config_error(
                "model.pretrained: small_cnn has no pretrained weights; set model.pretrained=false "
                "or choose model.backbone=efficientnet_lite0 / mobilenet_v2"
            )
        return self


def method_param_specs(name: str) -> dict[str, tuple[Any, Any]]:
    """Hyperparameters of method ``name``: ``{param: (type hint, default or ...)}`` from its constructor.

    Arguments the jobs fill themselves (backbone, bits, num_classes, tag_vocab_size) are left out.
    Constructors taking ``**kwargs`` contribute their base class's parameters too.
    """
    from hashing.methods import HashingMethod, method_class

    specs: dict[str, tuple[Any, Any]] = {}
    for klass in method_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an unresolvable hint only loses type checking, not key checking
            hints = {}
        more = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                more = True
            elif p.kind in _NAMED and p.name not in _FIXED_METHOD_ARGS and p.name not in specs:
                default = ... if p.default is inspect.Parameter.empty else p.default
                specs[p.name] = (hints.get(p.name, Any), default)
        if not more or klass is HashingMethod:
            break
    return specs


class MethodSection(_Section):
    """The hashing method and its own hyperparameters (checked against its constructor)."""

    name: str = Field("idhn", description="a key of hashing.methods.METHODS")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor keyword arguments")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from hashing.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(sorted(METHODS))}")
        return v

    @model_validator(mode="after")
    def _params(self) -> MethodSection:
        try:
            specs = method_param_specs(self.name)
        except ImportError as exc:
            raise _config_error(f"method.name: method {self.name!r} cannot be imported ({exc})") from exc
        fields = {k: (hint, default) for k, (hint, default) in specs.items()}
        params_model = create_model(
            f"{self.name}_params",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False),
            **fields,
        )
        try:
            validated = params_model.model_validate(self.params)
        except ValidationError as exc:
            allowed = ", ".join(specs) or "(none)"
            lines = []
            for err in exc.errors():
                key = "method.params." + ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    lines.append(f"unknown key {key!r} for method {self.name!r}; allowed: {allowed}")
                elif err["type"] == "missing":
                    lines.append(f"{key}: required by method {self.name!r}")
                else:
                    lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
            raise _config_error("\n".join(lines)) from None
        self.params = validated.model_dump()
        return self


class TrainSection(_Section):
    """Ray Train (DDP) settings of ``pipelines/train.py``."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, description="rows per worker per step (global batch = x num_workers)")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of the new layers")
    weight_decay: float = Field(0.0, ge=0.0)
    lr_step_every: int | None = Field(
        None, gt=0, description="multiply lr by lr_gamma every N steps; None: constant"
    )
    lr_decays: int | None = Field(
        None, gt=0,
        description="multiply lr by lr_gamma this many times, evenly spaced over the run's total steps "
        "(step size = total steps // (lr_decays + 1)), so the schedule fires whatever the run's length; "
        "exclusive with lr_step_every",
    )
    lr_gamma: float = Field(0.5, gt=0.0, le=1.0)
    num_workers: int = Field(2, gt=0, description="Ray Train workers (DDP processes)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0.0, description="CPUs per worker (0.5 leaves room for Ray Data)")
    checkpoint_every_steps: int = Field(
        0, ge=0, description="extra checkpoints every N steps; 0: per epoch only"
    )
    checkpoints_to_keep: int = Field(2, gt=0)
    max_failures: int = Field(
        1, ge=-1, description="worker-group restarts from the last checkpoint; -1: unlimited"
    )
    storage_path: str | None = Field(
        None, description="Ray Train storage (local or s3://); None: {run.root}/train"
    )

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return _absolute(_no_credentials(v, "train.storage_path"))

    @model_validator(mode="after")
    def _one_schedule(self) -> TrainSection:
        if self.lr_step_every is not None and self.lr_decays is not None:
            raise _config_error(
                "train.lr_decays: give either train.lr_step_every (a fixed step count) or train.lr_decays "
                "(decays spread over the run), not both; set the other to null"
            )
        return self


class TrackingSection(_Section):
    """MLflow tracking; the URI resolves as: this value, env MLFLOW_TRACKING_URI, sqlite in run.root."""

    uri: str | None = None
    experiment: str | None = Field(
        None, description="experiment name; None: one per dataset (hashing.mlflow.names)"
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return _no_credentials(v, "tracking.uri")


class ModelRefSection(_Section):
    """Which registered model version a job reads: ``version`` if set, else ``alias``."""

    model: str | None = Field(
        None, description="registered name or models:/ URI; None: hashing-{method.name}-{dataset name}"
    )
    alias: str = CHALLENGER
    version: int | None = Field(None, gt=0)


class EncodeSection(ModelRefSection):
    """``pipelines/encode.py``: the Ray Data job writing Parquet code shards."""

    codes_root: str | None = Field(None, description="local folder or s3:// URI; None: {run.root}/codes")
    splits: list[Split] = Field(default_factory=lambda: ["query", "database"])
    batch_size: int = Field(256, gt=0, description="images per model call")
    actors: int = Field(2, gt=0, description="encoder actors (model replicas)")
    cpus_per_actor: float = Field(0.5, gt=0.0)
    use_gpu: bool = False
    force: bool = Field(False, description="rewrite parts that already exist")

    @field_validator("codes_root")
    @classmethod
    def _codes_root(cls, v: str | None) -> str | None:
        return _absolute(_no_credentials(v, "encode.codes_root"))


class EvaluateSection(ModelRefSection):
    """``pipelines/evaluate.py`` (and the final evaluation of a training run)."""

    topk: int | None = Field(1000, gt=0, description="K of mAP@K; None: all of the database")
    ndcg_k: int = Field(100, gt=0)
    radius: int = Field(2, ge=0, description="Hamming radius of the precision-within-radius metric")
    precision_at: list[int] = Field(default_factory=lambda: list(range(100, 1001, 100)), min_length=1)
    plots: bool = Field(True, description="log PR and P@N curves as PNG")


class PromoteSection(_Section):
    """``pipelines/promote.py``: challenger -> champion only when it beats the champion."""

    model: str | None = Field(None, description="registered name; None: hashing-{method.name}-{dataset name}")
    metric: str = Field(
        "map",
        description="the evaluation metric that decides: map (the mAP@K evaluated) or a name like ndcg_at_100"
    )
    margin: float = Field(0.0, ge=0.0, description="challenger must beat the champion by this much")
    dry_run: bool = False


class SearchSection(ModelRefSection):
    """``pipelines/search.py``: top-k over the code shards of one model version."""

    alias: str = CHAMPION
    k: int = Field(10, gt=0)
    backend: Literal["numpy", "faiss", "mih", "faiss-ivf"] = Field(
        "faiss", description="faiss: exact IndexBinaryFlat; mih: exact, sub-linear multi-index hashing "
        "(hashing/mih.py); faiss-ivf: sub-linear, approximate; numpy: exact scan"
    )
    nlist: int | None = Field(None, gt=0, description="faiss-ivf inverted lists; None: sqrt(database size)")
    nprobe: int = Field(8, gt=0,
                        description="faiss-ivf lists scanned per query (more: better recall, slower)")


class IngestSection(_Section):
    """``hashing ingest``: where the samples come from. It writes to ``dataset.uri`` (name ``dataset.name``,
    ``dataset.shard_size`` samples per shard; the built-in source is ``dataset.builtin`` / ``dataset.seed``),
    and ``data.strict`` / ``data.max_bad_fraction`` decide about bad records."""

    source: Literal["builtin", "folder"] | None = Field(
        None,
        description="builtin: the built-in dataset; folder: ingest.labels; None: folder when labels is set"
    )
    labels: str | None = Field(None, description="folder source: labels file (.csv, or .jsonl JSON Lines)")
    classes: str | None = Field(
        None,
        description="folder source: a,b,c or a .txt file (one class per line); None: classes.txt by labels"
    )
    split: Split = Field("train", description="split of rows without one")
    max_shard_bytes: int | None = Field(None, gt=0, description="also cap shards at about this many bytes")
    overwrite: bool = Field(False,
                            description="replace a dataset already at dataset.uri (kept if this fails)")
    unlabelled: bool = Field(False, description="folder source: allow a labels file without labels")
    max_image_pixels: int | None = Field(
        None, ge=1,
        description="images of more pixels are too_large; None: env HASHING_MAX_IMAGE_PIXELS or 8192^2"
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: str | None) -> str | None:
        return _absolute(v)

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: str | None) -> str | None:
        return _absolute(v) if v is not None and v.endswith(".txt") else v

    @model_validator(mode="after")
    def _source(self) -> IngestSection:
        if self.source is None:
            self.source = "folder" if self.labels is not None else "builtin"
        if self.source == "folder" and self.labels is None:
            raise _config_error("ingest.labels: required with ingest.source=folder (the labels file)")
        return self


class Config(_Section):
    """The whole run configuration (see the module docstring)."""

    run: RunSection = Field(default_factory=RunSection)
    ray: RaySection = Field(default_factory=RaySection)
    storage: StorageSection = Field(default_factory=StorageSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    method: MethodSection = Field(default_factory=MethodSection)
    train: TrainSection = Field(default_factory=TrainSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    encode: EncodeSection = Field(default_factory=EncodeSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    promote: PromoteSection = Field(default_factory=PromoteSection)
    search: SearchSection = Field(default_factory=SearchSection)
    ingest: IngestSection = Field(default_factory=IngestSection)

    @model_validator(mode="after")
    def _derived_paths(self) -> Config:
        if self.dataset.uri is None and self.ingest.source == "folder":
            raise _config_error("dataset.uri: required with ingest.source=folder (where the dataset goes)")
        if self.dataset.uri is None:
            self.dataset.uri = os.path.join(self.run.root, "data", f"builtin-{self.dataset.builtin}")
        if self.train.storage_path is None:
            self.train.storage_path = os.path.join(self.run.root, "train")
        if self.encode.codes_root is None:
            self.encode.codes_root = os.path.join(self.run.root, "codes")
        return self


def _format_error(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One line for one pydantic error: the dotted key, what is wrong, the value given."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "config":
        return err["ctx"]["message"]
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, err["loc"][:-1])
        return f"unknown key {key!r}; allowed: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{key}: required"
    if err["type"] == "value_error":
        return f"{key}: {err['ctx']['error']}"
    value = repr(err.get("input"))
    value = value if len(value) <= 80 else value[:77] + "..."
    return f"{key or '<config>'}: {err['msg']} (got {value})"


def _allowed_keys(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    model: Any = root
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = next(
            (
                a
                for a in (annotation, *typing.get_args(annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if model is None:
            return []
    return list(model.model_fields)


def validate_config(data: Mapping[str, Any], source: str = "config") -> Config:
    """Validate a plain mapping into a ``Config``; every problem at once in one ``ConfigError``."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_error(e, Config) for e in exc.errors()], source) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain JSON/YAML-safe data; ``validate_config`` of it gives it back."""
    return config.model_dump(mode="json")


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML text (what a run logs as ``config.yaml``)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"train.epochs": 10, "method.params.alpha": 0.1, ...}`` (MLflow params).

    Lists stay lists; empty mappings disappear.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# Names that moved to hashing.config_loader / hashing.cli_args, still importable from here (lazily: those
# modules import this one).
_MOVED = {"load_config": "hashing.config_loader", "apply_override": "hashing.config_loader",
          "config_parser": "hashing.cli_args", "config_from_args": "hashing.cli_args",
          "parse_cli": "hashing.cli_args"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
