"""``python pipelines/encode.py ...`` is ``hashing encode ...``: the job is ``hashing/jobs/encode.py``."""

from hashing.cli import script

script(__name__, "encode")
