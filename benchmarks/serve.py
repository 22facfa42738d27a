"""Query service load test: concurrent HTTP clients against ``hashing serve``'s app on 127.0.0.1.

    .venv/bin/python benchmarks/serve.py [--sizes 1000000,10000000] [--clients 1,4,16]
        [--requests 2000] [--max-seconds 60] [--k 10] [--partitions 2] [--workdir runs/bench-serve]

Per size n: ``n`` synthetic 64-bit codes (clustered as learned codes are: ``benchmarks.search``'s
``clustered_codes``, 4096 centres, each bit flipped with probability 1/16) written as the code-shard
parts of ``--shard-size`` rows each (``hashing.code_shards``, cached in ``--workdir``), for a random
small-CNN IDHN of 64 bits logged to a new local MLflow (sqlite in a temporary folder; the ingress
loads it as it would the champion). No training and no dataset: the ``ServicePlan`` is built directly, the app
is ``hashing.serving_app``'s (``start_service``: ``--partitions`` Partition deployments, each its own
exact MIH, and the ``Search`` ingress) on a local Ray instance.

Queries are **by key only** (``GET /search?key=KEY&k=K``, keys drawn uniformly from the database):
the path of every query through the ingress, the fan-out and the exact merge; image queries add the
small CNN's forward pass on the ingress, not measured here. For each ``--clients`` c: c threads,
each with its own HTTP connection, send ``--requests`` requests in all, one after the other per
thread, stopping early at ``--max-seconds``. Columns: q/s = answered requests / wall seconds;
p50 / p99 = latency percentiles in ms of the answered requests (connection set-up included for the
first); errors = non-200 answers and failed requests; ``start s`` = deploy until every replica is up
(loading the parts and building the MIH indexes).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table
from benchmarks.search import clustered_codes, random_codes

log = logging.getLogger("bench.serve")

BITS = 64
CLUSTERS = 4096
FLIP_LOG2 = 4
SPLIT = "database"
MODEL_NAME = "bench-serve-idhn"
TEST_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "test.yaml"
HEADERS = ["codes", "partitions", "clients", "requests", "q/s", "p50 ms", "p99 ms", "errors", "start s"]


def key_of(row: int) -> str:
    """The synthetic key of database row ``row``."""
    return f"db-{row:09d}"


def source_shard(index: int) -> str:
    """The (imaginary) dataset shard whose code part is number ``index``."""
    return f"{SPLIT}/shard-{index:06d}.tar"


def log_random_model(mlflow_dir: Path) -> tuple[str, str]:
    """Log and register a random-init small-CNN IDHN with ``BITS`` bits as version 1 of ``MODEL_NAME`` in a
    new MLflow on a sqlite file in ``mlflow_dir``; returns (tracking URI, ``models:/MODEL_NAME/1``)."""
    import mlflow
    import torch

    from hashing.config import load_config
    from hashing.methods import build_method
    from hashing.mlflow.logged_model import log_hashing_model
    from hashing.mlflow.registry import register_model
    from hashing.mlflow.runs import set_experiment, setup_tracking
    from hashing.models import build_backbone

    config = load_config(TEST_CONFIG, [f"run.root={mlflow_dir}", f"model.bits={BITS}"])
    tracking_uri = setup_tracking(config)
    set_experiment(config, "bench-serve")
    torch.manual_seed(0)
    built = build_method("idhn", backbone=build_backbone("small_cnn"), bits=BITS, num_classes=10,
                         tag_vocab_size=0, **config.method.params).eval()
    with mlflow.start_run():
        uri = log_hashing_model(built, config, extra={"dataset": "synthetic"})
    version = register_model(uri, MODEL_NAME, None)
    return tracking_uri, f"models:/{MODEL_NAME}/{version}"


def write_codes(root: str, n: int, shard_size: int, model_uri: str, kind: str,
                seed: int) -> list[tuple[str, str]]:
    """Write ``n`` synthetic codes as parts of ``shard_size`` rows under ``root`` (skipped when the parts
    are there); returns ``[(source shard, sha256)]`` in order, as a plan's partitions list them."""
    from hashing import storage
    from hashing.code_shards import PartMeta, list_parts, part_name, part_uri, write_part

    shards = [(source_shard(i), hashlib.sha256(f"{n}:{kind}:{seed}:{i}".encode()).hexdigest())
              for i in range(-(-n // shard_size))]
    present = list_parts(root) if storage.exists(root) else {}
    if all(part_name(s) in present for s, _ in shards):
        return shards
    rng = np.random.default_rng(seed)
    centres = random_codes(CLUSTERS, BITS, rng)
    for i, (shard, sha) in enumerate(shards):
        rows = range(i * shard_size, min(n, (i + 1) * shard_size))
        codes = (random_codes(len(rows), BITS, rng) if kind == "random"
                 else clustered_codes(len(rows), centres, FLIP_LOG2, rng))
        meta = PartMeta(bits=BITS, method="idhn", model_uri=model_uri, dataset_fingerprint="synthetic",
                        source_shard=shard, source_sha256=sha)
        write_part(part_uri(root, shard), [key_of(r) for r in rows], codes, None, meta)
    return shards


@dataclass
class LoadResult:
    """One load level: answered latencies in seconds, failed requests, wall seconds."""

    latencies: list[float]
    errors: int
    seconds: float


def load(url: str, keys: list[str], k: int, clients: int, requests: int, max_seconds: float) -> LoadResult:
    """``clients`` threads send ``requests`` GET /search?key=..&k=.. in all (``keys`` in turn), each
    thread one request at a time on its own keep-alive connection, until done or ``max_seconds``."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(url)
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            start = time.perf_counter()
            try:
                connection.request("GET", f"/search?key={keys[i % len(keys)]}&k={k}")
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(latencies, errors[0], time.perf_counter() - start)


def wait_healthy(url: str, n: int, timeout_s: float = 600) -> None:
    """Until ``/health`` reports ``n`` codes (the app is up and every partition answers)."""
    import json

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
                if json.loads(response.read())["size"] == n:
                    return
        except (OSError, urllib.error.URLError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not report {n} codes within {timeout_s} s")
        time.sleep(0.5)


def row(n: int, partitions: int, clients: int, result: LoadResult, start_s: float) -> list:
    answered = np.asarray(result.latencies) * 1000
    p50, p99 = (np.percentile(answered, [50, 99]) if answered.size else (float("nan"),) * 2)
    return [n, partitions, clients, answered.size + result.errors, f"{answered.size / result.seconds:.1f}",
            f"{p50:.1f}", f"{p99:.1f}", result.errors, f"{start_s:.1f}"]


def run(sizes: list[int], clients: list[int], requests: int, max_seconds: float, k: int, partitions: int,
        shard_size: int, workdir: Path, kind: str, cpus_per_replica: float, seed: int) -> list[list]:
    """Every (size, clients) row. Serve is started here and shut down after, on this process's Ray if it
    has one, else on a local instance (127.0.0.1, 2 CPUs) started here and shut down after."""
    import ray
    from ray import serve

    from hashing import storage
    from hashing.serving_app import ServicePlan, split_contiguous, start_service

    workdir.mkdir(parents=True, exist_ok=True)
    mlflow_dir = tempfile.TemporaryDirectory(prefix="bench-serve-mlflow-")
    tracking_uri, model_uri = log_random_model(Path(mlflow_dir.name))
    rows = []
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        for n in sizes:
            codes_uri = str(workdir / "codes" / f"{kind}-{n}-seed{seed}")
            shards = write_codes(storage.join(codes_uri, SPLIT), n, shard_size, model_uri, kind, seed)
            plan = ServicePlan(model_name=MODEL_NAME, model_version=1, model_uri=model_uri,
                               codes_uri=codes_uri, split=SPLIT,
                               partitions=split_contiguous(shards, partitions), classes=None,
                               tracking_uri=tracking_uri, default_k=k, other_split=None,
                               num_cpus=cpus_per_replica)
            started = time.perf_counter()
            url = start_service(plan, host="127.0.0.1", port=free_port())
            wait_healthy(url, n)
            start_s = time.perf_counter() - started
            keys = [key_of(int(r)) for r in np.random.default_rng(seed + 1).integers(0, n, requests)]
            load(url, keys[: min(50, len(keys))], k, 1, min(50, requests), max_seconds)  # warm-up
            for c in clients:
                result = load(url, keys, k, c, requests, max_seconds)
                rows.append(row(n, partitions, c, result, start_s))
                log.info("n=%d clients=%d: %s", n, c, rows[-1])
            serve.shutdown()
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
        mlflow_dir.cleanup()
    return rows


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="database sizes, comma-separated")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=2000, help="requests per load level")
    parser.add_argument("--max-seconds", type=float, default=60, help="time cap per load level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=250_000, help="codes per code-shard part")
    parser.add_argument("--codes", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--cpus-per-replica", type=float, default=0.25)
    parser.add_argument("--workdir", default="runs/bench-serve", help="MLflow and code parts (reused)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sizes, clients = _ints(args.sizes), _ints(args.clients)
    except ValueError:
        print("--sizes and --clients must be comma-separated integers", file=sys.stderr)
        return 2
    if (not sizes or not clients or min(sizes + clients) < 1 or args.requests < 1 or args.k < 1
            or args.max_seconds <= 0 or args.shard_size < 1
            or not 1 <= args.partitions <= -(-min(sizes) // args.shard_size)):
        print("sizes, clients, requests, k, shard size >= 1, max seconds > 0, and partitions in "
              "[1, parts of the smallest size]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(machine())
    print(f"{args.codes} 64-bit codes, key queries, k={args.k}, {args.requests} requests per level "
          f"(cap {args.max_seconds:g} s), {args.partitions} partitions + 1 ingress replica at "
          f"{args.cpus_per_replica:g} CPU each")
    rows = run(sizes, clients, args.requests, args.max_seconds, args.k, args.partitions, args.shard_size,
               Path(args.workdir), args.codes, args.cpus_per_replica, args.seed)
    print(markdown_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
