"""``python pipelines/ingest.py ...`` is ``hashing ingest ...``: the job is ``hashing/jobs/ingest.py``."""

from hashing.cli import script

script(__name__, "ingest")
