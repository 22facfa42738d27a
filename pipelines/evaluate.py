"""``python pipelines/evaluate.py ...`` is ``hashing evaluate ...``: the job, ``hashing/jobs/evaluate.py``."""

from hashing.cli import script

script(__name__, "evaluate")
