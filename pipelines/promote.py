"""``python pipelines/promote.py ...`` is ``hashing promote ...``: the job is ``hashing/jobs/promote.py``."""

from hashing.cli import script

script(__name__, "promote")
