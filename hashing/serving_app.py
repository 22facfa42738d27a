"""The query service on Ray Serve: top-k Hamming search over the champion's code shards, over HTTP.

    plan = plan_service(config, partitions=2)    # champion pinned, its database parts split in N groups
    url = start_service(plan, host="127.0.0.1", port=8000)

Deployments (one Serve application, ``APP_NAME``):

- ``Partition{p}`` (p = 0 .. N-1, one replica each): owns a contiguous run of the split's code-shard
  parts (dataset order) and its own exact ``MultiIndexHash`` (``hashing.index.HammingIndex`` backend
  ``mih``) over them; answers its own top-k and looks keys up.
- ``Search`` (the HTTP ingress, FastAPI): turns a request into a query code (the stored code of a key,
  or an uploaded image encoded by the model version whose codes are served), fans it out to every
  partition and merges their top-k exactly with ``hashing.index.merge_topk``: partition p's rows get
  global ids ``p << PARTITION_SHIFT | row``, so (distance, global id) order is (distance, database
  position) order, and the answer is the one ``hashing search`` gives, ties included.

HTTP (JSON answers ``{"model": name, "version": v, "results": [{"key", "distance", "labels"}, ...]}``):

- ``GET /search?key=KEY&k=K``: neighbours of a stored sample (looked up in the database split, then in
  the query split, as ``hashing search --key``).
- ``POST /search/image?k=K`` with the image file as the body (PNG/JPEG/WebP).
- ``GET /health``: the model, the split, its size and the partitions.
- ``GET /``: the web page (``hashing/web/index.html``): a search form, the results as thumbnails.
- ``GET /thumbnail?key=KEY``: the stored image of a dataset sample as PNG (``hashing.thumbnails``).

Bad requests get a 4xx JSON ``{"error": message}``: k outside ``[1, max_k]`` 400, a body that is not an
image 400, an upload over ``max_upload_bytes`` 413 (an image over the pixel limit too), an unknown key 404.

The service is pinned to the version it resolved at start; following ``champion`` when it moves is
not done in the service (restart it; on Kubernetes, ``infra/rayservice.yaml`` deploys ``app_builder``
and the nightly CronJob replaces the cluster after a promotion, see ``infra/README.md``).
"""

import asyncio
import itertools
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from hashing import storage, tracking
from hashing.code_shards import CodeShardError, list_parts, load_split, part_name
from hashing.config import Config
from hashing.data.schema import label_names, load_manifest
from hashing.errors import InputError, UserError
from hashing.thumbnails import ThumbnailStore, UnknownKeyError
from hashing.web import index_html

log = logging.getLogger("serve")

APP_NAME = "hashing-search"
PARTITION_SHIFT = 40  # global id of partition p's row r: p << 40 | r (a partition holds < 2**40 rows)
MAX_K = 1000
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
DEFAULT_CPUS = 0.25  # per replica; Serve's default of 1 CPU each does not fit small machines


@dataclass(frozen=True)
class ServicePlan:
    """What the service serves: the pinned ``model``, its ``codes_uri`` and ``split``, the split's parts as
    ``partitions`` (per partition ``[(source shard, sha256)]``, contiguous, dataset order), the dataset's
    ``classes`` (None: labels shown as indices), and where the replicas find MLflow and S3."""

    model_name: str
    model_version: int
    model_uri: str
    codes_uri: str
    split: str
    partitions: list[list[tuple[str, str]]]
    classes: list[str] | None
    tracking_uri: str
    s3_endpoint: str | None = None
    default_k: int = 10
    max_k: int = MAX_K
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    num_cpus: float = DEFAULT_CPUS
    other_split: str | None = field(default="query")
    dataset_uri: str | None = None  # where /thumbnail reads the stored images (None: not served)


def split_contiguous(items: list, n: int) -> list[list]:
    """``items`` in ``n`` contiguous runs whose lengths differ by at most one (order kept)."""
    if not 1 <= n <= len(items):
        raise InputError(f"partitions must be in [1, {len(items)}] (the number of code parts), got {n}")
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def plan_service(config: Config, partitions: int, split: str = "database", **options: object) -> ServicePlan:
    """Pin the configured model version (``search.model``; ``search.version``, else ``search.alias``,
    default ``champion``) and split its code parts of ``split`` into ``partitions`` contiguous groups.

    Every shard of the split in ``dataset.json`` must have its code part (as for ``hashing search``).
    ``options``: the other ``ServicePlan`` fields (``default_k``, ``max_k``, ``max_upload_bytes``,
    ``num_cpus``).

    Raises:
        LookupError: no such model, version or alias.
        CodeShardError: code parts missing.
        InputError: ``partitions`` not in ``[1, number of parts]``.
    """
    tracking_uri = tracking.setup_tracking(config)
    manifest = load_manifest(config.dataset.uri)
    model = tracking.resolve_section_model(config.search, config.method.name, manifest.name)
    from hashing.registry import codes_location

    codes_uri = codes_location(model, config.encode.codes_root)
    root = storage.join(codes_uri, split)
    shards = [(s.path, s.sha256) for s in manifest.split(split).shards]
    present = list_parts(root)
    missing = [s for s, _ in shards if part_name(s) not in present]
    if missing:
        raise CodeShardError(f"{root}: {len(missing)} of {len(shards)} source shards have no code part "
                             f"({', '.join(missing[:5])}); run `hashing encode` for models:/{model.name}/"
                             f"{model.version}")
    groups = split_contiguous(shards, partitions)
    other = next(s for s in ("database", "query") if s != split)
    return ServicePlan(model_name=model.name or model.uri, model_version=model.version or 0,
                       model_uri=model.uri, dataset_uri=config.dataset.uri,
                       codes_uri=codes_uri, split=split, partitions=groups, classes=manifest.classes,
                       tracking_uri=tracking_uri, s3_endpoint=config.storage.s3_endpoint,
                       default_k=config.search.k, other_split=other, **options)


class ServiceError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@serve.deployment
class Partition:
    """Partition ``index`` of the split: the code parts ``shards`` under ``split_root``, and its MIH."""

    def __init__(self, index: int, split_root: str, shards: list[tuple[str, str]], model_uri: str,
                 s3_endpoint: str | None) -> None:
        from hashing.index import HammingIndex

        storage.use_s3_endpoint(s3_endpoint)
        codes = load_split(split_root, expected=dict(shards))
        if codes.model_uri != model_uri:
            raise CodeShardError(f"{split_root} was written by {codes.model_uri}, not {model_uri}")
        self.index = index
        self.codes = codes
        self.rows = codes.index_of()
        self.mih = HammingIndex(codes.codes, codes.keys, backend="mih")
        log.info("partition %d: %d codes from %d parts", index, len(codes), len(shards))

    def info(self) -> dict:
        return {"partition": self.index, "size": len(self.codes), "parts": len(self.codes.parts)}

    def code_of(self, key: str) -> np.ndarray | None:
        row = self.rows.get(key)
        return None if row is None else self.codes.codes[row: row + 1]

    def search(self, query: np.ndarray, k: int) -> dict:
        """This partition's top-k of one query code uint8[1, B]: local ids, distances, keys, labels."""
        if len(self.codes) == 0:
            return {"distances": np.zeros((1, 0), np.int32), "ids": np.zeros((1, 0), np.int64), "keys": [],
                    "labels": []}
        distances, ids = self.mih.search(query, k)
        rows = ids[0].tolist()
        labels = [self.codes.labels[r] for r in rows]
        return {"distances": distances, "ids": ids, "keys": [str(self.codes.keys[r]) for r in rows],
                "labels": [None if row is None else row.tolist() for row in labels]}


api = FastAPI(title="hashing search")


@serve.deployment
@serve.ingress(api)
class Search:
    """The ingress: a query code from the request, fan-out to every partition, exact merge."""

    def __init__(self, partitions: list, plan: dict) -> None:
        import mlflow

        self.partitions = partitions
        self.plan = ServicePlan(**plan)
        storage.use_s3_endpoint(self.plan.s3_endpoint)
        mlflow.set_tracking_uri(self.plan.tracking_uri)
        self.page_html = index_html()
        self.thumbnails = ThumbnailStore(self.plan.dataset_uri) if self.plan.dataset_uri else None
        from hashing.encoding import Encoder

        method, model_config = tracking.load_hashing_model(self.plan.model_uri)
        self.encoder = Encoder(method, model_config.dataset.image_size, batch_size=1)
        self.other_codes: dict[str, np.ndarray] = {}
        if self.plan.other_split:
            try:
                other = load_split(storage.join(self.plan.codes_uri, self.plan.other_split))
                if other.model_uri == self.plan.model_uri:
                    self.other_codes = {str(k): other.codes[i: i + 1] for i, k in enumerate(other.keys)}
            except CodeShardError as exc:
                log.warning("keys of the %s split cannot be looked up: %s", self.plan.other_split, exc)

    # --- requests -------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> dict:
        infos = await asyncio.gather(*[p.info.remote() for p in self.partitions])
        return {"model": self.plan.model_name, "version": self.plan.model_version, "split": self.plan.split,
                "size": sum(i["size"] for i in infos), "partitions": infos}

    @api.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page_html)

    @api.get("/thumbnail")
    async def thumbnail(self, key: str = "") -> Response:
        try:
            if not key:
                raise ServiceError(400, "give a key: /thumbnail?key=KEY")
            png = await asyncio.to_thread(self._thumbnail, key)
            return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
        except ServiceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.get("/search")
    async def by_key(self, key: str = "", k: str | None = None) -> JSONResponse:
        try:
            top = self._k(k)
            if not key:
                raise ServiceError(400, "give a key: /search?key=KEY&k=K")
            return JSONResponse(await self._answer(await self._key_code(key), top))
        except ServiceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.post("/search/image")
    async def by_image(self, request: Request, k: str | None = None) -> JSONResponse:
        try:
            top = self._k(k)
            data = await self._body(request)
            code = await asyncio.to_thread(self._image_code, data)
            return JSONResponse(await self._answer(code, top))
        except ServiceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    # --- helpers --------------------------------------------------------------------------------

    def _k(self, k: str | None) -> int:
        if k is None:
            return self.plan.default_k
        try:
            value = int(k)
        except ValueError:
            value = None
        if value is None or not 1 <= value <= self.plan.max_k:
            raise ServiceError(400, f"k must be an integer in [1, {self.plan.max_k}], got {k!r}")
        return value

    async def _key_code(self, key: str) -> np.ndarray:
        codes = await asyncio.gather(*[p.code_of.remote(key) for p in self.partitions])
        found = next((c for c in codes if c is not None), None)
        if found is None:
            found = self.other_codes.get(key)
        if found is None:
            raise ServiceError(404, f"key {key!r} is in neither the {self.plan.split} nor the "
                                    f"{self.plan.other_split} codes of {self.plan.model_name} "
                                    f"v{self.plan.model_version}")
        return found

    def _thumbnail(self, key: str) -> bytes:
        if self.thumbnails is None:
            raise ServiceError(404, "no dataset in the service's plan: thumbnails are not served")
        try:
            return self.thumbnails.png(key)
        except UnknownKeyError as exc:
            raise ServiceError(404, str(exc)) from None
        except UserError as exc:  # the dataset itself is missing or damaged: the service's fault
            raise ServiceError(500, f"cannot read the image of {key!r}: {exc}") from None

    async def _body(self, request: Request) -> bytes:
        limit = self.plan.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServiceError(413, f"upload of {declared} bytes, more than the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, f"upload of more than the limit of {limit} bytes")
            chunks.append(chunk)
        if size == 0:
            raise ServiceError(400, "empty body: POST the image file's bytes")
        return b"".join(chunks)

    def _image_code(self, data: bytes) -> np.ndarray:
        from hashing.data.transforms import ImageTooLargeError, decode_image

        try:
            image = decode_image(data, "the uploaded image")
        except ImageTooLargeError as exc:
            raise ServiceError(413, str(exc)) from None
        except InputError:
            raise ServiceError(400, f"the upload is not a readable image ({len(data)} bytes); "
                                    "POST a PNG, JPEG or WebP file") from None
        return self.encoder.encode_raw([image])

    async def _answer(self, query: np.ndarray, k: int) -> dict:
        answers = await asyncio.gather(*[p.search.remote(query, k) for p in self.partitions])
        from hashing.index import merge_topk

        distances, ids = merge_topk([(a["distances"], a["ids"], p << PARTITION_SHIFT)
                                     for p, a in enumerate(answers)], k)
        local = {}
        for p, a in enumerate(answers):
            for row, key, labels in zip(a["ids"][0].tolist(), a["keys"], a["labels"], strict=True):
                local[(p << PARTITION_SHIFT) | row] = (key, labels)
        results = []
        for d, i in zip(distances[0].tolist(), ids[0].tolist(), strict=True):
            if i < 0:
                continue
            key, labels = local[i]
            names = label_names(labels, self.plan.classes)
            results.append({"key": key, "distance": int(d), "labels": names})
        return {"model": self.plan.model_name, "version": self.plan.model_version, "results": results}


def build_app(plan: ServicePlan) -> serve.Application:
    """The Serve app of ``plan``: a ``Partition{p}`` deployment per group of parts, ``Search`` in front."""
    root = storage.join(plan.codes_uri, plan.split)
    options = {"ray_actor_options": {"num_cpus": plan.num_cpus}}
    partitions = [Partition.options(name=f"Partition{p}", **options)
                  .bind(p, root, shards, plan.model_uri, plan.s3_endpoint)
                  for p, shards in enumerate(plan.partitions)]
    return Search.options(**options).bind(partitions, asdict(plan))


APP_ARGS = {"config": str, "overrides": list, "partitions": int, "cpus_per_replica": (int, float),
            "max_upload_bytes": int}


@dataclass(frozen=True)
class AppArgs:
    """The ``args`` of ``app_builder``, checked: the config path, its ``key=value`` overrides, the options
    of ``hashing serve`` (``partitions``, ``cpus_per_replica``, ``max_upload_bytes``)."""

    config: str
    overrides: list[str] = field(default_factory=list)
    partitions: int = 2
    cpus_per_replica: float = DEFAULT_CPUS
    max_upload_bytes: int = MAX_UPLOAD_BYTES


def parse_app_args(args: dict) -> AppArgs:
    """Check the ``args`` mapping of a Serve config (``serveConfigV2``) -> ``AppArgs``.

    Raises:
        InputError: not a mapping, an unknown key, ``config`` missing, a value of the wrong type,
            ``partitions`` < 1, ``cpus_per_replica`` <= 0, ``max_upload_bytes`` < 1.
    """
    if not isinstance(args, dict):
        raise InputError(f"app args must be a mapping, got {type(args).__name__}")
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise InputError(f"unknown app args {unknown}; known: {sorted(APP_ARGS)}")
    if "config" not in args:
        raise InputError("app args: `config` (the YAML config's path) is required")
    for key, value in args.items():
        if isinstance(value, bool) or not isinstance(value, APP_ARGS[key]):
            raise InputError(f"app args: {key} has the wrong type ({type(value).__name__}: {value!r})")
    overrides = args.get("overrides", [])
    if not all(isinstance(o, str) and "=" in o for o in overrides):
        raise InputError(f"app args: overrides must be key=value strings, got {overrides!r}")
    options = {k: args[k] for k in ("partitions", "cpus_per_replica", "max_upload_bytes") if k in args}
    parsed = AppArgs(config=args["config"], overrides=list(overrides), **options)
    if parsed.partitions < 1:
        raise InputError(f"app args: partitions must be >= 1, got {parsed.partitions}")
    if parsed.cpus_per_replica <= 0:
        raise InputError(f"app args: cpus_per_replica must be > 0, got {parsed.cpus_per_replica}")
    if parsed.max_upload_bytes < 1:
        raise InputError(f"app args: max_upload_bytes must be >= 1, got {parsed.max_upload_bytes}")
    return parsed


def app_builder(args: dict) -> serve.Application:
    """The Serve application builder for a Serve config (``import_path: hashing.serving_app:app_builder``,
    as ``infra/rayservice.yaml``): ``args`` as ``parse_app_args`` -> the config (``load_config(config,
    overrides)``; its S3 endpoint made the process's) -> ``plan_service`` (the model version pinned now:
    ``search.version``, else ``search.alias``, default ``champion``) -> ``build_app``.

    Serve calls it whenever the application is deployed (a new cluster, a changed config): that is when
    the version to serve is resolved.
    """
    from hashing.config_loader import load_config

    parsed = parse_app_args(args)
    config = load_config(parsed.config, parsed.overrides)
    storage.use_s3_endpoint(config.storage.s3_endpoint)
    plan = plan_service(config, parsed.partitions, num_cpus=float(parsed.cpus_per_replica),
                        max_upload_bytes=parsed.max_upload_bytes)
    log.info("app_builder: serving models:/%s/%d (%d partitions)", plan.model_name, plan.model_version,
             len(plan.partitions))
    return build_app(plan)


def start_service(plan: ServicePlan, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be initialised) and deploy ``plan``; returns
    the base URL once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(plan), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"
