"""``python pipelines/search.py ...`` is ``hashing search ...``: the job is ``hashing/jobs/search.py``."""

from hashing.cli import script

script(__name__, "search")
