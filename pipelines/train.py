"""``python pipelines/train.py ...`` is ``hashing train ...``: the job is ``hashing/jobs/train.py``."""

from hashing.cli import script

script(__name__, "train")
