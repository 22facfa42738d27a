"""``python pipelines/demo.py ...`` is ``hashing demo ...``: the job is ``hashing/jobs/demo.py``."""

from hashing.cli import script

script(__name__, "demo")
