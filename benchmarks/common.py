"""What the speed benchmarks share: best-of-N timing, the machine they ran on, a Markdown table.

The scripts run as ``python benchmarks/<name>.py`` and import this as ``benchmarks.common`` (each
puts the repository root on ``sys.path`` first, as the tests do).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from hashing.config import Config
    from hashing.data.schema import DatasetManifest

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """One timed run: ``wall`` seconds and the ``cpu`` seconds this process used meanwhile (all threads).

    On a busy machine ``wall`` grows with other load and ``cpu`` much less; ``cpu > wall`` means
    several threads worked (BLAS, faiss OpenMP, torch).
    """

    wall: float
    cpu: float


def best_time(fn: Callable[[], T], repeats: int) -> tuple[Timing, T]:
    """Run ``fn`` ``repeats`` times; return (the timing of the fastest run by wall clock, the last result).

    The minimum is the least disturbed run: what the code costs, not what other load on the machine added.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best, result = Timing(float("inf"), float("inf")), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
        if timing.wall < best.wall:
            best = timing
    return best, result


def machine() -> str:
    """One line: CPU model, cores, Python and the load average when called (other work running?)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get 4 significant digits unless already formatted as strings."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def builtin_config(workdir: Path, config_path: str, preset: str,
                   overrides: Sequence[str]) -> tuple[Config, DatasetManifest]:
    """Ingest the built-in ``preset`` under ``workdir`` (once; a rerun reuses it) and load ``config_path``
    pointed at it, runs under ``workdir``; return (config, manifest)."""
    from hashing.config import load_config
    from hashing.data.ingest import ingest
    from hashing.data.schema import load_manifest
    from hashing.data.sources import builtin_source

    dataset = workdir / f"builtin-{preset}"
    config = load_config(config_path, [f"run.root={workdir}", f"dataset.builtin={preset}",
                                       f"dataset.uri={dataset}", *overrides])
    if not (dataset / "dataset.json").exists():
        classes, tags, total, records = builtin_source(preset, seed=config.dataset.seed)
        ingest(str(dataset), records, name=f"builtin-{preset}", classes=classes, tags=tags, total=total,
               shard_size=config.dataset.shard_size, progress=False)
    return config, load_manifest(str(dataset))
