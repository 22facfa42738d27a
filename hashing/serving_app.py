"""The query service on Ray Serve: top-k Hamming search over the champion's code shards, over HTTP.

    plan = plan_service(config, partitions=2)    # champion resolved, its database parts split in N groups
    url = start_service(plan, host="127.0.0.1", port=8000)                  # pinned: one application
    url = start_service(plan, host="127.0.0.1", port=8000, following=True)  # + hashing.serving_follow

Deployments:

- ``Partition{p}`` (p = 0 .. N-1, ``partition_replicas`` replicas each): owns a contiguous run of the
  split's code-shard parts (dataset order) and its own exact ``MultiIndexHash``
  (``hashing.index.HammingIndex`` backend ``mih``) over them; answers its own top-k and looks keys up.
- ``Search`` (the HTTP ingress, FastAPI, one replica): turns a request into a query code (the stored
  code of a key, an uploaded image encoded by the model version whose codes are served, or tags through
  that version's text network), fans it out to every partition and merges their top-k exactly with
  ``hashing.index.merge_topk``: partition p's rows get global ids ``p << PARTITION_SHIFT | row``, so
  (distance, global id) order is (distance, database position) order, and the answer is the one
  ``hashing search`` gives, ties included.

Pinned (``build_app``, also ``app_builder``), both are one Serve application, ``APP_NAME``. Following
the registry (``start_service(..., following=True)``), each version's partitions are Serve applications
of their own without a route (``codes_app_names``: ``hashing-codes-v{N}-p{p}``) and ``Search.switch``
moves the ingress from one version to the next. Either way the ingress holds the served version as one
``VersionBundle`` (plan, encoder, partition handles, the other split's codes) and a request takes it once,
at its start: every answer comes wholly from one version, whose number it carries.

HTTP (JSON answers ``{"model": name, "version": v, "results": [{"key", "distance", "labels"}, ...]}``):

- ``GET /search?key=KEY&k=K``: neighbours of a stored sample (looked up in the database split, then in
  the query split, as ``hashing search --key``).
- ``POST /search/image?k=K`` with the image file as the body (PNG/JPEG/WebP).
- ``GET /search/text?q=TAG,TAG&k=K``: comma-separated tags of the dataset's vocabulary -> the model's
  text network (multimodal methods such as DSMHN), as ``hashing search --text``.
- ``GET /health``: the model, the split, its size and the partitions.
- ``GET /``: the web page (``hashing/web/index.html``): a search form, the results as thumbnails.
- ``GET /thumbnail?key=KEY``: the stored image of a dataset sample as PNG (``hashing.thumbnails``).

Bad requests get a 4xx JSON ``{"error": message}``: k outside ``[1, max_k]`` 400, a body that is not an
image 400, an upload over ``max_upload_bytes`` 413 (an image over the pixel limit too), an unknown key 404,
a text query to a model without a text network or without a known tag 400. A partition that fails to
answer (its replica died) makes the request a 503 with ``Retry-After`` (never a merge of the others);
a bug a 500 ``{"error": ...}`` (the traceback goes to the replica's log).

On Kubernetes, ``infra/rayservice.yaml`` deploys ``app_builder`` (pinned) and the nightly CronJob moves
the RayService to the new champion after a promotion, see ``infra/README.md``.
"""

import asyncio
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from hashing import storage
from hashing.code_shards import CodeShardError, list_parts, load_split, part_name
from hashing.config import Config
from hashing.data.schema import label_names, load_manifest
from hashing.errors import InputError, UserError
from hashing.mlflow.logged_model import load_hashing_model
from hashing.mlflow.names import CODES_URI
from hashing.mlflow.registry import codes_location, resolve_section_model, version_tags
from hashing.mlflow.runs import setup_tracking
from hashing.thumbnails import ThumbnailStore, UnknownKeyError
from hashing.web import index_html

log = logging.getLogger("serve")

APP_NAME = "hashing-search"
PARTITION_SHIFT = 40  # global id of partition p's row r: p << 40 | r (a partition holds < 2**40 rows)
MAX_K = 1000
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
DEFAULT_CPUS = 0.25  # per replica; Serve's default of 1 CPU each does not fit small machines
CODES_APP_PREFIX = "hashing-codes-v"
RETRY_AFTER_S = 2  # a 503's Retry-After: Serve restarts a failed partition replica within seconds


@dataclass(frozen=True)
class ServicePlan:
    """What the service serves: the pinned ``model``, its ``codes_uri`` and ``split``, the split's parts as
    ``partitions`` (per partition ``[(source shard, sha256)]``, contiguous, dataset order), the dataset's
    ``classes`` (None: labels shown as indices) and ``tags`` (the text queries' vocabulary; None: none),
    where the replicas find MLflow and S3, and ``partition_replicas`` (Serve replicas per partition)."""

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
    tags: list[str] | None = None
    partition_replicas: int = 1
    dataset_uri: str | None = None  # where /thumbnail reads the stored images (None: not served)


def split_contiguous(items: list, n: int) -> list[list]:
    """``items`` in ``n`` contiguous runs whose lengths differ by at most one (order kept)."""
    if not 1 <= n <= len(items):
        raise InputError(f"partitions must be in [1, {len(items)}] (the number of code parts), got {n}")
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def plan_service(config: Config, partitions: int, split: str = "database", encoded_only: bool = False,
                 **options: object) -> ServicePlan:
    """Pin the configured model version (``search.model``; ``search.version``, else ``search.alias``,
    default ``champion``) and split its code parts of ``split`` into ``partitions`` contiguous groups.

    Every shard of the split in ``dataset.json`` must have its code part (as for ``hashing search``);
    ``encoded_only``: the version's ``codes_uri`` tag must be set too (a finished encode sets it last).
    ``options``: the other ``ServicePlan`` fields (``default_k``, ``max_k``, ``max_upload_bytes``,
    ``num_cpus``, ``partition_replicas``).

    Raises:
        LookupError: no such model, version or alias.
        CodeShardError: code parts missing (``encoded_only``: or no ``codes_uri`` tag).
        InputError: ``partitions`` not in ``[1, number of parts]``.
    """
    tracking_uri = setup_tracking(config)
    manifest = load_manifest(config.dataset.uri)
    model = resolve_section_model(config.search, config.method.name, manifest.name)
    if encoded_only and not version_tags(model).get(CODES_URI):
        raise CodeShardError(f"models:/{model.name}/{model.version} has no {CODES_URI} tag yet: its encode "
                             "has not finished")
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
                       tags=manifest.tags,
                       tracking_uri=tracking_uri, s3_endpoint=config.storage.s3_endpoint,
                       default_k=config.search.k, other_split=other, **options)


class ServiceError(Exception):
    """A request not answered: ``status`` and ``{"error": message}`` (a 503 also a ``Retry-After``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        return JSONResponse({"error": str(self)}, status_code=self.status, headers=headers)


def codes_app_names(plan: ServicePlan) -> list[str]:
    """The Serve applications (no route prefix) of ``plan``'s partitions when the service follows the
    registry: ``hashing-codes-v{version}-p{p}``, each holding deployment ``Partition{p}``."""
    return [f"{CODES_APP_PREFIX}{plan.model_version}-p{p}" for p in range(len(plan.partitions))]


def partition_handles(plan: ServicePlan) -> list:
    """Handles of the ``Partition{p}`` deployments in the codes applications of ``plan``."""
    return [serve.get_deployment_handle(f"Partition{p}", app_name=name)
            for p, name in enumerate(codes_app_names(plan))]


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


@dataclass
class VersionBundle:
    """Everything one model version answers with: its ``plan``, its ``encoder`` (images; its method's text
    network for text), handles of its ``partitions``, the other split's codes ``{key: uint8[1, B]}``, and
    ``in_flight``, the requests answering with it now. A request takes the bundle once, at its start."""

    plan: ServicePlan
    encoder: object  # hashing.encoding.Encoder (imported lazily: torch)
    partitions: list
    other_codes: dict[str, np.ndarray]
    in_flight: int = 0

    @contextmanager
    def serving(self) -> Iterator["VersionBundle"]:
        """Count a request answered with this bundle while the block runs."""
        self.in_flight += 1
        try:
            yield self
        finally:
            self.in_flight -= 1


def load_bundle(plan: ServicePlan, partitions: list) -> VersionBundle:
    """The bundle of ``plan``: its model loaded from MLflow as the encoder, the other split's codes read."""
    import mlflow

    from hashing.encoding import Encoder

    storage.use_s3_endpoint(plan.s3_endpoint)
    mlflow.set_tracking_uri(plan.tracking_uri)
    method, model_config = load_hashing_model(plan.model_uri)
    encoder = Encoder(method, model_config.dataset.image_size, batch_size=1)
    other_codes: dict[str, np.ndarray] = {}
    if plan.other_split:
        try:
            other = load_split(storage.join(plan.codes_uri, plan.other_split))
            if other.model_uri == plan.model_uri:
                other_codes = {str(k): other.codes[i: i + 1] for i, k in enumerate(other.keys)}
        except CodeShardError as exc:
            log.warning("keys of the %s split cannot be looked up: %s", plan.other_split, exc)
    return VersionBundle(plan, encoder, partitions, other_codes)


async def fan_out(bundle: VersionBundle, method: str, *args: object) -> list:
    """``method(*args)`` on every partition of ``bundle``, their answers in partition order.

    Raises ``ServiceError`` 503 when any partition failed (a replica died, say): a merge of the others
    would be a wrong answer, so none is given."""
    answers = await asyncio.gather(*[getattr(p, method).remote(*args) for p in bundle.partitions],
                                   return_exceptions=True)
    failed = [(p, a) for p, a in enumerate(answers) if isinstance(a, Exception)]
    if failed:
        plan, (partition, error) = bundle.plan, failed[0]
        log.warning("partitions %s of models:/%s/%d failed: %s", [p for p, _ in failed], plan.model_name,
                    plan.model_version, error)
        raise ServiceError(503, f"partition {partition} of {plan.model_name} v{plan.model_version} did not "
                                f"answer ({type(error).__name__}); it is being restarted: retry in "
                                f"{RETRY_AFTER_S} s")
    return answers


api = FastAPI(title="hashing search")


@api.exception_handler(Exception)
async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug's answer: 500 JSON naming the error (its traceback goes to the replica's log, not the client)."""
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the service's log"},
                        status_code=500)


@serve.deployment
@serve.ingress(api)
class Search:
    """The ingress: a query code from the request, fan-out to every partition, exact merge.

    ``partitions``: handles bound in the same application (pinned), or None: the partitions are in the
    codes applications of ``plan`` (``codes_app_names``), and ``switch`` moves the service to another
    version's. One replica: ``switch`` reaches the replica it is called on.
    """

    def __init__(self, partitions: list | None, plan: dict) -> None:
        pinned = ServicePlan(**plan)
        self.bundle = load_bundle(pinned, partitions if partitions is not None else partition_handles(pinned))
        self.page_html = index_html()
        self.thumbnails = ThumbnailStore(pinned.dataset_uri) if pinned.dataset_uri else None

    @property
    def plan(self) -> ServicePlan:
        """The plan of the version served now."""
        return self.bundle.plan

    async def switch(self, plan: dict) -> dict:
        """Serve the version of ``plan`` from now on (its codes applications deployed and healthy): load
        its encoder, swap the bundle, then wait until the requests still answering with the old one are
        done. Returns ``{"version": new, "previous": old, "drained": requests waited for}``."""
        new_plan = ServicePlan(**plan)
        new = await asyncio.to_thread(load_bundle, new_plan, partition_handles(new_plan))
        old, self.bundle = self.bundle, new
        drained = old.in_flight
        while old.in_flight:
            await asyncio.sleep(0.01)
        log.info("now serving models:/%s/%d (was v%d; %d requests drained)", new_plan.model_name,
                 new_plan.model_version, old.plan.model_version, drained)
        return {"version": new_plan.model_version, "previous": old.plan.model_version, "drained": drained}

    # --- requests -------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> JSONResponse:
        with self.bundle.serving() as bundle:
            try:
                infos = await fan_out(bundle, "info")
            except ServiceError as exc:
                return exc.response()
            plan = bundle.plan
            return JSONResponse({"model": plan.model_name, "version": plan.model_version, "split": plan.split,
                                 "size": sum(i["size"] for i in infos), "partitions": infos})

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
        with self.bundle.serving() as bundle:
            try:
                top = self._k(k)
                if not key:
                    raise ServiceError(400, "give a key: /search?key=KEY&k=K")
                return JSONResponse(await self._answer(await self._key_code(key, bundle), top, bundle))
            except ServiceError as exc:
                return exc.response()

    @api.post("/search/image")
    async def by_image(self, request: Request, k: str | None = None) -> JSONResponse:
        try:
            top = self._k(k)
            data = await self._body(request)
        except ServiceError as exc:
            return exc.response()
        with self.bundle.serving() as bundle:
            try:
                code = await asyncio.to_thread(self._image_code, data, bundle)
                return JSONResponse(await self._answer(code, top, bundle))
            except ServiceError as exc:
                return exc.response()

    @api.get("/search/text")
    async def by_text(self, q: str = "", k: str | None = None) -> JSONResponse:
        with self.bundle.serving() as bundle:
            try:
                top = self._k(k)
                code = await asyncio.to_thread(self._text_code, q, bundle)
                return JSONResponse(await self._answer(code, top, bundle))
            except ServiceError as exc:
                return exc.response()

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

    async def _key_code(self, key: str, bundle: VersionBundle | None = None) -> np.ndarray:
        """The stored code uint8[1, B] of ``key`` in ``bundle`` (default: the version served now)."""
        bundle = bundle or self.bundle
        codes = await fan_out(bundle, "code_of", key)
        found = next((c for c in codes if c is not None), None)
        if found is None:
            found = bundle.other_codes.get(key)
        if found is None:
            plan = bundle.plan
            raise ServiceError(404, f"key {key!r} is in neither the {plan.split} nor the "
                                    f"{plan.other_split} codes of {plan.model_name} v{plan.model_version}")
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

    def _image_code(self, data: bytes, bundle: VersionBundle | None = None) -> np.ndarray:
        """The code uint8[1, B] of an uploaded image file, by ``bundle``'s encoder (default: now's)."""
        from hashing.data.transforms import ImageTooLargeError, decode_image

        try:
            image = decode_image(data, "the uploaded image")
        except ImageTooLargeError as exc:
            raise ServiceError(413, str(exc)) from None
        except InputError:
            raise ServiceError(400, f"the upload is not a readable image ({len(data)} bytes); "
                                    "POST a PNG, JPEG or WebP file") from None
        return (bundle or self.bundle).encoder.encode_raw([image])

    def _text_code(self, text: str, bundle: VersionBundle | None = None) -> np.ndarray:
        """The code uint8[1, B] of comma-separated tags (``parse_tags`` over the dataset's tags, as
        ``hashing search --text``) from the text network of ``bundle``'s model (default: now's)."""
        from hashing.data.tags import TagVocabulary
        from hashing.retrieval import parse_tags, tags_code

        bundle = bundle or self.bundle
        plan = bundle.plan
        if "text" not in bundle.encoder.method.modalities:
            raise ServiceError(400, f"models:/{plan.model_name}/{plan.model_version} has no text network: "
                                    "text queries need a multimodal model (e.g. method dsmhn; serve one with "
                                    "search.model=NAME); use /search?key=KEY or POST /search/image")
        if not text.strip():
            raise ServiceError(400, "give tags: /search/text?q=dress,handbag&k=K")
        vocabulary = TagVocabulary(plan.tags or [])
        try:
            tags = parse_tags(text, vocabulary)
        except InputError as exc:
            raise ServiceError(400, f"{exc}; give comma-separated tags of the dataset") from None
        return tags_code(bundle.encoder, vocabulary, tags)

    async def _answer(self, query: np.ndarray, k: int, bundle: VersionBundle | None = None) -> dict:
        """The top-k of a query code uint8[1, B] over ``bundle``'s partitions (default: now's), merged."""
        bundle = bundle or self.bundle
        answers = await fan_out(bundle, "search", query, k)
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
            names = label_names(labels, bundle.plan.classes)
            results.append({"key": key, "distance": int(d), "labels": names})
        return {"model": bundle.plan.model_name, "version": bundle.plan.model_version, "results": results}


def partition_apps(plan: ServicePlan) -> list[serve.Application]:
    """Deployment ``Partition{p}`` of ``plan`` per group of parts (``plan.partition_replicas`` replicas
    each), bound."""
    root = storage.join(plan.codes_uri, plan.split)
    return [Partition.options(name=f"Partition{p}", num_replicas=plan.partition_replicas,
                              ray_actor_options={"num_cpus": plan.num_cpus})
            .bind(p, root, shards, plan.model_uri, plan.s3_endpoint)
            for p, shards in enumerate(plan.partitions)]


def build_app(plan: ServicePlan) -> serve.Application:
    """The Serve app of ``plan`` pinned: its ``Partition{p}`` deployments with ``Search`` in front."""
    return Search.options(ray_actor_options={"num_cpus": plan.num_cpus}).bind(partition_apps(plan),
                                                                                asdict(plan))


def build_following_app(plan: ServicePlan) -> serve.Application:
    """The ``Search`` app alone, over the codes applications of ``plan`` (deployed first, ``deploy_codes``);
    ``Search.switch`` moves it to another version's."""
    return Search.options(ray_actor_options={"num_cpus": plan.num_cpus}).bind(None, asdict(plan))


def deploy_codes(plan: ServicePlan) -> list[str]:
    """Deploy ``plan``'s partitions, each as its own Serve application without a route
    (``codes_app_names``), all at once; returns once every replica is healthy. Returns the application
    names."""
    names = codes_app_names(plan)
    serve.run_many([serve.RunTarget(app, name=name, route_prefix=None)
                    for name, app in zip(names, partition_apps(plan), strict=True)])
    return names


APP_ARGS = {"config": str, "overrides": list, "partitions": int, "cpus_per_replica": (int, float),
            "max_upload_bytes": int, "partition_replicas": int}


@dataclass(frozen=True)
class AppArgs:
    """The ``args`` of ``app_builder``, checked: the config path, its ``key=value`` overrides, the options
    of ``hashing serve`` (``partitions``, ``cpus_per_replica``, ``max_upload_bytes``,
    ``partition_replicas``)."""

    config: str
    overrides: list[str] = field(default_factory=list)
    partitions: int = 2
    cpus_per_replica: float = DEFAULT_CPUS
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    partition_replicas: int = 1


def parse_app_args(args: dict) -> AppArgs:
    """Check the ``args`` mapping of a Serve config (``serveConfigV2``) -> ``AppArgs``.

    Raises:
        InputError: not a mapping, an unknown key, ``config`` missing, a value of the wrong type,
            ``partitions`` < 1, ``cpus_per_replica`` <= 0, ``max_upload_bytes`` < 1,
            ``partition_replicas`` < 1.
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
    options = {k: v for k, v in args.items() if k not in ("config", "overrides")}
    parsed = AppArgs(config=args["config"], overrides=list(overrides), **options)
    if parsed.partitions < 1:
        raise InputError(f"app args: partitions must be >= 1, got {parsed.partitions}")
    if parsed.cpus_per_replica <= 0:
        raise InputError(f"app args: cpus_per_replica must be > 0, got {parsed.cpus_per_replica}")
    if parsed.max_upload_bytes < 1:
        raise InputError(f"app args: max_upload_bytes must be >= 1, got {parsed.max_upload_bytes}")
    if parsed.partition_replicas < 1:
        raise InputError(f"app args: partition_replicas must be >= 1, got {parsed.partition_replicas}")
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
                        max_upload_bytes=parsed.max_upload_bytes,
                        partition_replicas=parsed.partition_replicas)
    log.info("app_builder: serving models:/%s/%d (%d partitions)", plan.model_name, plan.model_version,
             len(plan.partitions))
    return build_app(plan)


def start_service(plan: ServicePlan, host: str = "127.0.0.1", port: int = 8000,
                  following: bool = False) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be initialised) and deploy ``plan``; returns
    the base URL once every replica is up. ``following``: the partitions in their own codes applications
    (``deploy_codes``), so that ``hashing.serving_follow`` can move the service to another version."""
    serve.start(http_options={"host": host, "port": port})
    if following:
        deploy_codes(plan)
    app = build_following_app(plan) if following else build_app(plan)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"
