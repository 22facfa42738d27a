"""What the query-service tests share: HTTP calls to a running service, ``hashing search``'s answers (the
expected ones), and a steady stream of concurrent requests."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Self


def call(url: str, data: bytes | None = None, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON body) of a GET (or a POST of ``data``)."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/octet-stream"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def expected_hits(model_registry, k: int, *overrides: str, **query: str) -> list[dict]:
    """``hashing search``'s hits for ``query`` (``key=``, ``image=`` or ``text=``) as the service answers
    them: ``[{"key", "distance", "labels"}]``, best first."""
    from hashing.jobs.search import run_search

    result = run_search(model_registry.config(*overrides, f"search.k={k}", "search.backend=mih"), **query)
    return [{"key": h.key, "distance": h.distance, "labels": h.labels} for h in result.hits]


@dataclass
class Answer:
    """One request of a stream: its path, when it started and ended (``time.monotonic()`` s), the
    status (0: no HTTP answer at all, e.g. a timeout) and the JSON body."""

    path: str
    started: float
    ended: float
    status: int
    body: dict


class RequestStream:
    """``clients`` threads sending the GET ``paths`` (cycled) to ``url`` back to back until ``stop``."""

    def __init__(self, url: str, paths: list[str], clients: int = 4, timeout: float = 60) -> None:
        self.url, self.paths, self.clients, self.timeout = url, paths, clients, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = []

    def __enter__(self) -> Self:
        for c in range(self.clients):
            self._futures.append(self._pool.submit(self._client, c))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for future in self._futures:
            future.result()
        self._pool.shutdown()

    def _client(self, offset: int) -> None:
        for path in itertools.islice(itertools.cycle(self.paths), offset, None):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                status, body = call(f"{self.url}{path}", timeout=self.timeout)
            except (OSError, json.JSONDecodeError) as exc:  # no answer, or not JSON (a traceback page)
                status, body = 0, {"error": repr(exc)}
            with self._lock:
                self.answers.append(Answer(path, started, time.monotonic(), status, body))


def replica_pids(app: str, deployment: str) -> set[int]:
    """PIDs of the live replica actors of ``deployment`` in Serve application ``app`` (from the GCS actor
    table: the tests' Ray runs without a dashboard, which ``ray.util.state`` needs)."""
    from ray._private import state

    return {a["Pid"] for a in state.actors().values()
            if a["ActorClassName"] == f"ServeReplica:{app}:{deployment}" and a["State"] == "ALIVE"}


def encoded_version(model_registry, method: str = "idhn", seed: int = 7, alias: str = "champion"):
    """A registered version of ``method`` (random weights from ``seed``) with ``alias`` moved to it, and
    its query + database code shards (``codes_uri`` tag set)."""
    model = model_registry.register(method, seed=seed, alias=alias)
    model_registry.encode(model)
    return model
