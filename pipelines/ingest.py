"""``python pipelines/ingest.py ...`` is ``hashing ingest ...``; the job is ``hashing/jobs/ingest.py`` (see
``--help``).

As a script (also ``ray job submit -- python pipelines/ingest.py ...``) it runs the ``hashing ingest``
command; imported (``import pipelines.ingest``) it is the module ``hashing.jobs.ingest`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
else:
    from hashing.jobs import ingest as _job

    sys.modules[__name__] = _job
