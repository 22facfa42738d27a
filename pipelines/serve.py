"""``python pipelines/serve.py ...`` is ``hashing serve ...``: the job is ``hashing/jobs/serve.py``."""

from hashing.cli import script

script(__name__, "serve")
