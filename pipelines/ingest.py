"""``python pipelines/ingest.py ...`` = ``hashing ingest ...``: the job lives in ``hashing/jobs/ingest.py`` (see ``--help``).

Run as a script (also under ``ray job submit -- python pipelines/ingest.py``) it is the ``hashing ingest`` command;
imported (``import pipelines.ingest``) it is the module ``hashing.jobs.ingest`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
else:
    from hashing.jobs import ingest as _job

    sys.modules[__name__] = _job
