"""S3 credentials never reach Ray's session folder: Ray workers resolve their own (issue 14).

A job process with a secret in its environment starts its own small Ray (75 MiB object store, spilling
into the session's temporary folder), reads an S3 dataset through ``read_split`` (so the workers
really authenticate by themselves), then puts objects that carry the filesystem ``read_split`` uses
until Ray spills them to disk. No file under Ray's temporary folder, spilled objects (scanned before
shutdown, which deletes them) and logs included, may contain the secret.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Th4t-Must-Not-Reach-Disk-0b9e"

JOB = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import ray
    from hashing import storage
    from hashing.data.read import read_split
    from hashing.data.transforms import Preprocess
    from hashing.data.ingest import ingest
    from hashing.data.sources import builtin_source

    temp_dir, root = sys.argv[1], sys.argv[2]
    classes, tags, total, records = builtin_source("tiny", seed=0)
    ingest(root, records, name="tiny", classes=classes, tags=tags, total=total, shard_size=64, progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=temp_dir,
             object_store_memory=75 << 20, _system_config={"object_spilling_config": json.dumps(
                 {"type": "filesystem", "params": {"directory_path": os.path.join(temp_dir, "spill")}})})
    rows = read_split(root, "query", Preprocess(16, (0.5,) * 3, (0.5,) * 3), num_cpus=0.5).take_all()
    fs, _ = storage.ray_filesystem(root)
    refs = [ray.put({"filesystem": fs, "pad": np.full(20 << 20, i, np.uint8)}) for i in range(8)]
    assert ray.get(refs[0])["pad"][0] == 0  # read back from the spill file
    # Scanned while Ray runs: it deletes spilled objects at shutdown.
    files = [os.path.join(d, f) for d, _, names in os.walk(temp_dir) for f in names]
    files = [f for f in files if os.path.isfile(f) and not os.path.islink(f)]
    spilled = [f for f in files if f.startswith(os.path.join(temp_dir, "spill"))]
    leaks = [f for f in files if os.environ["AWS_SECRET_ACCESS_KEY"].encode() in open(f, "rb").read()]
    print(json.dumps({"rows": len(rows), "spilled": len(spilled), "leaks": leaks}))
    ray.shutdown()
""")


@pytest.mark.slow
def test_no_secret_in_the_ray_session_folder_spilled_objects_included(s3_bucket: str) -> None:
    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", JOB, temp_dir, f"{s3_bucket}/ds"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen["rows"] == 64  # the workers read S3 with credentials of their own
        assert seen["spilled"] > 0, "nothing was spilled: the test did not exercise spilling"
        assert seen["leaks"] == []
        files = [p for p in Path(temp_dir).rglob("*") if p.is_file() and not p.is_symlink()]
        assert [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []  # logs after shutdown
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
